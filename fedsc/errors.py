"""Exceptions raised by fedsc. Messages name the bad input and the fix."""

from __future__ import annotations


class FedscInputError(ValueError):
    """Input data or configuration that cannot be used for a run."""
