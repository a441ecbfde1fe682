"""Choose a backend by name: ``make_aggregator("plaintext")``, ``make_aggregator("crypten")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smpc.aggregator import Aggregator


def _plaintext(**options: Any) -> Aggregator:
    from smpc.plaintext import PlaintextAggregator

    if options:
        raise TypeError(f"the plaintext backend takes no options, got {sorted(options)}.")
    return PlaintextAggregator()


def _crypten(**options: Any) -> Aggregator:
    from smpc.crypten_backend import CryptenAggregator

    return CryptenAggregator(**options)


BACKENDS: dict[str, Callable[..., Aggregator]] = {
    "plaintext": _plaintext,
    "crypten": _crypten,
}


def make_aggregator(name: str, **options: Any) -> Aggregator:
    """Create an aggregator.

    Parameters
    ----------
    name
        ``"plaintext"`` (exact, not private) or ``"crypten"`` (additive secret sharing
        among three CrypTen parties).
    **options
        Backend options (e.g. ``parties=3, mode="secure"`` for crypten).
    """
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown aggregation backend {name!r}; choose one of {sorted(BACKENDS)}."
        ) from None
    return factory(**options)
