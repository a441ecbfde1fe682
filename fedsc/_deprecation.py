"""Deprecated spellings still accepted, with a ``FutureWarning`` naming the new one.

Hand-written because the maintained helpers do other jobs: ``legacy-api-wrap`` (scanpy's)
turns positional arguments into keywords and ``typing_extensions.deprecated`` marks whole
functions; neither renames a keyword argument.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["caller_stacklevel", "renamed_arguments"]

F = TypeVar("F", bound=Callable[..., Any])


def caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside fedsc, for a warning raised in fedsc.

    A warning then names the user's line however deep in fedsc's wrappers it was raised
    (Python 3.12's ``skip_file_prefixes`` does this; 3.11 is supported).
    """
    frame = sys._getframe(1)  # the function that warns
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "fedsc":
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def renamed_arguments(**renames: str) -> Callable[[F], F]:
    """Accept each old keyword (``old="new"``) in place of the new one, with a FutureWarning.

    Passing both spellings raises :class:`TypeError` naming them.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(
                        f"{func.__qualname__}() got both {old}= and {new}=; pass {new}= only "
                        f"({old}= is its deprecated spelling)."
                    )
                warnings.warn(
                    f"{func.__module__}.{func.__qualname__}: {old}= is deprecated; use {new}=.",
                    FutureWarning,
                    stacklevel=caller_stacklevel(),
                )
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
