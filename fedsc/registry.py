"""A named registry: the single source of truth for one kind of pluggable component.

Methods (:mod:`fedsc.methods`), metric panels (:mod:`fedsc.evaluation.panels`) and
upstream embeddings (:mod:`fedsc.preprocessing`) each keep one :class:`Registry`; the
CLI, run-config validation, studies and the runner read them, so adding a component is
one ``register(...)`` call.
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar, overload

from fedsc.errors import FedscInputError
from smpc.named_registry import Registry as _Registry

T = TypeVar("T")

__all__ = ["Registry", "resolve"]


class Registry(_Registry[T]):
    """Name -> item; refuses duplicate names; an unknown name is a :class:`FedscInputError`.

    smpc's :class:`smpc.named_registry.Registry` (one registry style in both packages),
    with fedsc's input error for unknown names.

    Parameters
    ----------
    kind
        What the items are, for messages (``"method"``, ``"metric panel"``).
    """

    def unknown(self, name: object) -> Exception:
        """A :class:`FedscInputError` naming the registered names."""
        return FedscInputError(f"unknown {self.kind} {name!r}; choose one of {self.names()}.")


@overload
def resolve(ref: str) -> Any: ...


@overload
def resolve(ref: T | str) -> T: ...


def resolve(ref: object) -> object:
    """``"package.module:attribute"`` -> that attribute (imported on first use); else ``ref``.

    Built-in registrations name their heavy objects this way so that reading a registry
    (e.g. to build the CLI) does not import torch models. Typed: an entry of a
    ``Registry[Panel | str]`` resolves to a ``Panel`` (what a bare string names is not
    known before it is imported).
    """
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        if not attr:
            raise ValueError(f"a lazy reference must look like 'module:attribute', got {ref!r}.")
        return getattr(importlib.import_module(module), attr)
    return ref
