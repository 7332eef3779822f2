"""Errors of the data layer: each message names the file (or config key) and the problem."""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data: malformed or inconsistent files, empty captions, unknown languages."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A file or folder the data needs does not exist (caught by FileNotFoundError too)."""
