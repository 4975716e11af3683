"""Analysis: offline evaluation, export and import of the log, the report, and the Open Bandit
Dataset."""
