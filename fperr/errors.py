"""Exceptions raised for bad user input.

Everything a user can get wrong (a file, a spec, a format name, data) raises a
subclass of :class:`FperrInputError`; the command line turns it into one line
on stderr and exit code 2.
"""

from __future__ import annotations


class FperrInputError(ValueError):
    """Bad input: a missing file, malformed spec, unknown name, bad data."""


class SpecError(FperrInputError):
    """A model spec (YAML) or its weights are malformed or inconsistent."""
