"""Projections: the runner that folds the log into tables, projection versions and their storage,
the catalogue projection kept inline with appends, and the readers of the rewards projection."""
