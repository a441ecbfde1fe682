"""Choose a backend by name: ``make_aggregator("plaintext")``, ``make_aggregator("crypten")``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from smpc.named_registry import Registry

if TYPE_CHECKING:  # imported lazily: this module (and the backend names) loads without torch
    from smpc.aggregator import Aggregator
    from smpc.mechanisms.registry import MechanismSpec


def _plaintext(**options: Any) -> Aggregator:
    from smpc.plaintext import PlaintextAggregator

    if options:
        raise TypeError(f"the plaintext backend takes no options, got {sorted(options)}.")
    return PlaintextAggregator()


def _crypten(**options: Any) -> Aggregator:
    from smpc.crypten_backend import CryptenAggregator

    return CryptenAggregator(**options)


def _crypten_prestart(**options: Any) -> None:
    from smpc.options import CryptenOptions
    from smpc.party_pool import start_fork_server

    default = CryptenOptions()  # the aggregator's defaults, written once
    local = options.get("party_addresses") is None
    processes = options.get("transport", default.transport) != "threads"
    if local and processes and options.get("start_method", default.start_method) == "forkserver":
        start_fork_server()


#: The aggregation backends by name: a new backend is one module and one ``register`` line.
BACKENDS: Registry[Callable[..., Aggregator]] = Registry("aggregation backend")
BACKENDS.register("plaintext", _plaintext)
BACKENDS.register("crypten", _crypten)

#: Whether a backend has computation parties that receive shares (their views, and the
#: attacks on them, exist only there); a backend not listed is assumed to have them.
HAS_PARTIES: Registry[bool] = Registry("backend's parties entry")
HAS_PARTIES.register("plaintext", False)
HAS_PARTIES.register("crypten", True)

#: Optional per backend: start its slow parts in the background (see :func:`prestart`).
PRESTARTS: Registry[Callable[..., None]] = Registry("backend start-up")
PRESTARTS.register("crypten", _crypten_prestart)


def has_parties(name: str) -> bool:
    """Whether backend ``name`` has computation parties (unlisted: assumed so)."""
    return HAS_PARTIES[name] if name in HAS_PARTIES else True


def prestart(name: str, **options: Any) -> None:
    """Start what ``make_aggregator(name, **options)`` will need, in the background.

    CrypTen's local parties are forked from a server that imports torch and CrypTen
    (~2 CPU-s); started first thing, that import overlaps the caller's own set-up (imports,
    loading data) instead of its first operations. Best effort and idempotent: a no-op for
    backends without a start-up and for unknown names (``make_aggregator`` reports those).
    """
    if name in PRESTARTS:
        PRESTARTS[name](**options)


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
    factory = BACKENDS.get(name)  # an unknown name: a ValueError naming the backends
    specs = list(mechanisms or [])
    if specs:
        from smpc.mechanisms import MechanismAggregator, make_mechanisms

        built = make_mechanisms(specs)  # before starting the backend: fail fast
        return MechanismAggregator(factory(**options), built, seed=mechanism_seed)
    return factory(**options)
