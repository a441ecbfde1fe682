"""Exceptions raised by fedsc. Messages name the bad input and the fix."""

from __future__ import annotations


class FedscInputError(ValueError):
    """Input data or configuration that cannot be used for a run."""


class FedscOutputError(FedscInputError):
    """An output location that cannot be written (or would replace an earlier result)."""


class StoreLockedError(FedscInputError):
    """Another process holds a sweep store (two sweeps must not run the same runs)."""
