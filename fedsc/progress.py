"""Progress bars that stay quiet when not on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm  # plain bars: tqdm.auto needs ipywidgets in Jupyter

T = TypeVar("T")


def progress(iterable: Iterable[T], *, desc: str, enable: bool | None = None, **kw) -> Iterable[T]:
    """Wrap ``iterable`` in tqdm; ``enable=None`` shows the bar only on a terminal."""
    if enable is None:
        enable = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, disable=not enable, leave=False, **kw)
