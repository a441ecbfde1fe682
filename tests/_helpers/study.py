"""Study files (``fedsc sweep``'s YAML) written for a test."""

from __future__ import annotations

from pathlib import Path


def write_study(folder: Path, text: str) -> Path:
    """``folder/study.yaml`` holding ``text``; its path."""
    path = folder / "study.yaml"
    path.write_text(text)
    return path
