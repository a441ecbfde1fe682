"""Command line: ``fedsc run | demo | party | sweep | compare | report | deploy``.

One module per command (:mod:`fedsc.cli.app` lists them); ``python -m fedsc.cli`` and the
``fedsc`` entry point run :func:`main`.
"""

from __future__ import annotations

from fedsc.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
