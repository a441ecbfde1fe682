"""Batch-correction methods and the registry that maps a config's method name to them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fedsc.errors import FedscInputError


@dataclass(frozen=True)
class MethodSpec:
    """How the runner drives a method.

    Attributes
    ----------
    name
        Registry name; outputs are ``obsm["X_<name>"]`` (and ``layers[name]`` for
        expression methods).
    input
        ``"embedding"`` (refines ``obsm[use_rep]``) or ``"expression"`` (log-normalised X).
    federated
        Whether it aggregates through an :class:`smpc.Aggregator`.
    panels
        Default metric panels.
    entry
        ``"module:function"`` of its scanpy-style API.
    """

    name: str
    input: Literal["embedding", "expression"]
    federated: bool
    panels: tuple[str, ...]
    entry: str

    @property
    def run(self) -> Callable[..., Any]:
        module, func = self.entry.split(":")
        return getattr(importlib.import_module(module), func)


REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("scbatchprox", "embedding", True, ("scib",), "fedsc.tl:scbatchprox"),
        MethodSpec("fedscgen", "expression", True, ("fedscgen",), "fedsc.tl:fedscgen"),
        MethodSpec("scgen", "expression", False, ("fedscgen",), "fedsc.tl:scgen"),
    )
}


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise FedscInputError(
            f"unknown method {name!r}; choose one of {sorted(REGISTRY)}."
        ) from None
