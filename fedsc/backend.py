"""Aggregation backends (and privacy mechanisms) chosen by name, read from :mod:`smpc`.

``smpc.BACKENDS`` is the backend registry; this module only reads it. Privacy mechanisms
(clipping, DP noise, quantisation) are registered in ``smpc.mechanisms`` when that module
exists; :func:`check_mechanisms` validates run configs against it and
:func:`aggregator_for` is the single place where they are applied to an aggregator.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import smpc
from fedsc.errors import FedscInputError
from fedsc.run_privacy import check_mechanism_options, mechanism_name, smpc_mechanism

__all__ = [
    "aggregator_for",
    "backend_names",
    "check_backend",
    "check_mechanisms",
    "mechanism_name",
    "mechanism_names",
]


def backend_names() -> list[str]:
    """Names of the registered aggregation backends (``smpc.BACKENDS``)."""
    return list(smpc.BACKENDS)


def check_backend(name: str) -> str:
    """``name`` if it is a registered backend, else a clear :class:`FedscInputError`."""
    if name not in smpc.BACKENDS:
        raise FedscInputError(
            f"unknown aggregation backend {name!r}; choose one of {backend_names()}."
        )
    return name


def mechanism_names() -> list[str] | None:
    """Registered privacy mechanisms, or ``None`` when ``smpc`` has no mechanism registry."""
    try:
        module = importlib.import_module("smpc.mechanisms")
    except ModuleNotFoundError:
        return None
    registry = getattr(module, "MECHANISMS", None)
    return None if registry is None else list(registry)


def check_mechanisms(mechanisms: Sequence[Any]) -> list[Any]:
    """Validate mechanism entries against ``smpc``'s registry; return them as a list.

    Names must be registered; each entry's options are checked against the mechanism's
    constructor (names, required ones, types) and by building it once (ranges), so a bad
    option fails here, before any data are read
    (:func:`fedsc.run_privacy.check_mechanism_options`).
    """
    mechanisms = list(mechanisms or [])
    if not mechanisms:
        return mechanisms
    names = [mechanism_name(m) for m in mechanisms]
    known = mechanism_names()
    if known is None:
        raise FedscInputError(
            f"mechanisms {names} requested but this smpc has no mechanism registry "
            "(smpc.mechanisms.MECHANISMS); remove `mechanisms` or update smpc."
        )
    unknown = [n for n in names if n not in known]
    if unknown:
        raise FedscInputError(f"unknown mechanism(s) {unknown}; choose from {known}.")
    registry = getattr(importlib.import_module("smpc.mechanisms"), "MECHANISMS", {})
    return [
        check_mechanism_options(m, registry) if mechanism_name(m) in registry else m
        for m in mechanisms
    ]


def _with_mechanisms(agg: smpc.Aggregator, mechanisms: Sequence[Any]) -> smpc.Aggregator:
    """Wrap ``agg`` with the configured mechanisms (the one place they are applied).

    Entries are a run config's (a name or ``{name: {options}}``, see
    :func:`check_mechanisms`), or anything :func:`smpc.mechanisms.make_mechanism` takes.
    """
    if not mechanisms:
        return agg
    from smpc.mechanisms import MechanismAggregator, make_mechanisms

    return MechanismAggregator(agg, make_mechanisms([smpc_mechanism(m) for m in mechanisms]))


@contextmanager
def aggregator_for(
    backend: str | smpc.Aggregator,
    backend_options: dict[str, Any] | None = None,
    mechanisms: Sequence[Any] = (),
) -> Iterator[smpc.Aggregator]:
    """Yield an aggregator: the one given (left open), or a new one by name (closed after).

    Parameters
    ----------
    backend
        A registered backend name (``smpc.BACKENDS``) or an :class:`smpc.Aggregator`.
    backend_options
        Options for :func:`smpc.make_aggregator` (only with a name).
    mechanisms
        Privacy mechanisms wrapped around the aggregator (see :func:`check_mechanisms`).
    """
    if isinstance(backend, smpc.Aggregator):
        if backend_options:
            raise FedscInputError(
                "backend_options are only used when backend is a name; configure the "
                "aggregator you passed when you create it."
            )
        yield _with_mechanisms(backend, mechanisms)
        return
    check_backend(backend)
    with smpc.make_aggregator(backend, **(backend_options or {})) as agg:
        yield _with_mechanisms(agg, check_mechanisms(mechanisms))
