"""A named registry: the single source of truth for one kind of pluggable component.

Methods (:mod:`fedsc.methods`), metric panels (:mod:`fedsc.evaluation.panels`) and
upstream embeddings (:mod:`fedsc.preprocessing`) each keep one :class:`Registry`; the
CLI, run-config validation, studies and the runner read them, so adding a component is
one ``register(...)`` call.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar, overload

from fedsc.errors import FedscInputError

T = TypeVar("T")

__all__ = ["Registry", "resolve"]


class Registry(Generic[T]):
    """Name -> item; refuses duplicate names; unknown names are clear errors.

    Parameters
    ----------
    kind
        What the items are, for messages (``"method"``, ``"metric panel"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Add ``item`` under ``name``; a name already taken raises :class:`ValueError`."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}.")
        if name in self._items:
            raise ValueError(
                f"a {self.kind} named {name!r} is already registered; choose another name "
                f"or call unregister({name!r}) first."
            )
        self._items[name] = item
        return item

    def unregister(self, name: str) -> T:
        """Remove and return the item called ``name`` (e.g. in a test's teardown)."""
        item = self.get(name)
        del self._items[name]
        return item

    def get(self, name: str) -> T:
        """The item called ``name``; unknown names raise :class:`FedscInputError`."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise FedscInputError(
                f"unknown {self.kind} {name!r}; choose one of {self.names()}."
            ) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, item) pairs, in registration order."""
        return list(self._items.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


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
