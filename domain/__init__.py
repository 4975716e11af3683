"""Segue's pure domain: events, policies, folds and estimators.

No I/O, no clock, no hidden randomness: time, randomness and ids are arguments.
"""
