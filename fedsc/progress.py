"""Progress: a tqdm bar on a terminal, periodic log lines otherwise.

When stderr is not a terminal (a log file, a batch job, Jupyter) no bar is drawn; instead
:func:`progress` writes a line to the ``fedsc.progress`` logger (INFO) at most every
``fedsc.settings.progress_interval`` seconds (default 30), so long runs leave a trace in
their log. The library adds no logging handler: the CLI's does (``fedsc.settings.
configure_logging``), or configure ``logging`` yourself.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm  # plain bars: tqdm.auto needs ipywidgets in Jupyter

T = TypeVar("T")

logger = logging.getLogger(__name__)


def progress(
    iterable: Iterable[T],
    *,
    desc: str,
    enable: bool | None = None,
    interval: float | None = None,
    **kw: Any,
) -> Iterable[T]:
    """Wrap ``iterable`` in a progress report.

    Parameters
    ----------
    iterable
        What to iterate.
    desc
        What is being counted (e.g. ``"FedscGen rounds"``).
    enable
        ``True``: a tqdm bar; ``False``: nothing; ``None``: a bar on a terminal, else
        periodic log lines.
    interval
        Seconds between log lines; default ``fedsc.settings.progress_interval``.
    **kw
        Passed to tqdm (``total=`` is also used by the log lines).
    """
    if enable is None and not sys.stderr.isatty():
        if interval is None:
            from fedsc import settings

            interval = settings.progress_interval
        return _logged(iterable, desc, kw.get("total"), float(interval))
    return tqdm(iterable, desc=desc, disable=not enable, leave=False, **kw)


def _fmt(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


def _logged(iterable: Iterable[T], desc: str, total: int | None, interval: float) -> Iterator[T]:
    """Yield from ``iterable``, logging ``desc: i/total`` every ``interval`` seconds."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    start = last = time.monotonic()
    done = 0
    logger.debug("%s: started (%s items)", desc, "?" if total is None else total)
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= interval:
            last = now
            elapsed = now - start
            if total:
                eta = elapsed / done * (total - done)
                logger.info(
                    "%s: %d/%d (%.0f%%), %s elapsed, ~%s left",
                    desc,
                    done,
                    total,
                    100.0 * done / total,
                    _fmt(elapsed),
                    _fmt(eta),
                )
            else:
                logger.info("%s: %d done, %s elapsed", desc, done, _fmt(elapsed))
    if last != start:  # a long loop: say that it ended
        logger.info("%s: finished %d in %s", desc, done, _fmt(time.monotonic() - start))
    else:
        logger.debug("%s: finished %d in %s", desc, done, _fmt(time.monotonic() - start))
