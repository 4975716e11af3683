"""Segue's gateway: everything that touches the world (HTTP, PostgreSQL, files, processes)."""

__version__ = "0.1.0"
