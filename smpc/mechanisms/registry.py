"""Mechanisms by name: one line per mechanism."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from smpc.mechanisms.base import Mechanism
from smpc.mechanisms.clip import ClipL2
from smpc.mechanisms.gaussian import GaussianDP
from smpc.mechanisms.quantize import Quantize
from smpc.named_registry import Registry

#: The mechanisms by name (one ``register`` line per mechanism file).
MECHANISMS: Registry[Callable[..., Mechanism]] = Registry("mechanism")
MECHANISMS.register("clip", ClipL2)
MECHANISMS.register("gaussian", GaussianDP)
MECHANISMS.register("quantize", Quantize)


def register_mechanism(name: str, factory: Callable[..., Mechanism]) -> Callable[..., Mechanism]:
    """Add a mechanism to the registry (one line per new mechanism file).

    Raises ``ValueError`` when ``name`` is taken: unregister the old one first
    (``MECHANISMS.unregister(name)``) if replacing it is intended.
    """
    return MECHANISMS.register(name, factory)


#: What ``make_mechanism`` accepts: an instance, a name, ``{"name": ..., **options}``
#: or ``(name, {options})``.
MechanismSpec = Mechanism | str | Mapping[str, Any] | tuple[str, Mapping[str, Any]]


def make_mechanism(spec: MechanismSpec, **options: Any) -> Mechanism:
    """Build one mechanism.

    Parameters
    ----------
    spec
        A :class:`Mechanism` (returned as is), a registry name (``"clip"``), a mapping
        ``{"name": "clip", "max_norm": 1.0}`` or a pair ``("clip", {"max_norm": 1.0})``.
    **options
        Options for a name given as a string.
    """
    if isinstance(spec, Mechanism):
        if options:
            raise TypeError(f"options {sorted(options)} given with a ready mechanism {spec!r}.")
        return spec
    if isinstance(spec, Mapping):
        options = {**{k: v for k, v in spec.items() if k != "name"}, **options}
        if "name" not in spec:
            raise ValueError(
                f"mechanism mapping {dict(spec)!r} has no 'name'; choose one of "
                f"{sorted(MECHANISMS)}."
            )
        spec = spec["name"]
    elif isinstance(spec, tuple):
        name, opts = spec
        spec, options = name, {**dict(opts), **options}
    if not isinstance(spec, str) or spec not in MECHANISMS:
        raise ValueError(f"unknown mechanism {spec!r}; choose one of {sorted(MECHANISMS)}.")
    try:
        return MECHANISMS[spec](**options)
    except TypeError as err:
        raise TypeError(f"mechanism {spec!r}: {err}") from None


def make_mechanisms(specs: Sequence[MechanismSpec] | MechanismSpec) -> list[Mechanism]:
    """Build a list of mechanisms (a single spec is accepted too)."""
    if _is_single(specs):
        return [make_mechanism(specs)]  # type: ignore[arg-type]
    return [make_mechanism(s) for s in specs]  # type: ignore[union-attr]


def _is_single(spec: Any) -> bool:
    return isinstance(spec, Mechanism | str | Mapping) or (
        isinstance(spec, tuple)
        and len(spec) == 2
        and isinstance(spec[0], str)
        and isinstance(spec[1], Mapping)
    )
