"""Choose a backend by name: ``make_aggregator("plaintext")``, ``make_aggregator("crypten")``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from smpc.aggregator import Aggregator

if TYPE_CHECKING:
    from smpc.mechanisms.registry import MechanismSpec


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


def make_aggregator(
    name: str,
    *,
    mechanisms: Sequence[MechanismSpec] | None = None,
    mechanism_seed: int | None = None,
    **options: Any,
) -> Aggregator:
    """Create an aggregator.

    Parameters
    ----------
    name
        ``"plaintext"`` (exact, not private) or ``"crypten"`` (additive secret sharing
        among three CrypTen parties).
    mechanisms
        Mechanisms wrapped around the backend (:mod:`smpc.mechanisms`): instances,
        names (``"clip"``), ``{"name": "clip", "max_norm": 1.0}`` or
        ``("clip", {"max_norm": 1.0})``. ``None`` or empty: the bare backend.
    mechanism_seed
        Seed of the mechanisms' per-client generators (``None``: fresh entropy).
    **options
        Backend options (e.g. ``parties=3, mode="secure"`` for crypten).
    """
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown aggregation backend {name!r}; choose one of {sorted(BACKENDS)}."
        ) from None
    specs = list(mechanisms or [])
    if specs:
        from smpc.mechanisms import MechanismAggregator, make_mechanisms

        built = make_mechanisms(specs)  # before starting the backend: fail fast
        return MechanismAggregator(factory(**options), built, seed=mechanism_seed)
    return factory(**options)
