"""The repository's root, and the environment of a fresh interpreter that imports this
checkout (tests that start ``python -m fedsc.cli``, parties, coordinators)."""

from __future__ import annotations

import os
from pathlib import Path

#: This file is <root>/tests/_helpers/paths.py.
ROOT = Path(__file__).resolve().parents[2]


def checkout_env(**extra: str) -> dict[str, str]:
    """``os.environ`` with ``PYTHONPATH`` set to :data:`ROOT`, then ``extra`` on top."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}
