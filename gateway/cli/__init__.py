"""The `segue` command line, one module per command group, sharing `gateway.cli.common`.

The console script is `gateway.cli.main:main`; `python -m gateway.cli` runs it too."""
