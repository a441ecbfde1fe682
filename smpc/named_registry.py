"""A named registry: the one registry style of smpc and fedsc.

Backends (:data:`smpc.BACKENDS`), mechanisms (:data:`smpc.MECHANISMS`) and fedsc's methods,
panels, upstreams, attacks, executors, commands, ... each keep one :class:`Registry`:
a name maps to one item, a name is registered once, and an unknown name is an error that
lists the registered ones. fedsc's :class:`fedsc.registry.Registry` is this class with
fedsc's input error (smpc never imports fedsc).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(ValueError, KeyError):
    """A name no item is registered under (a ``ValueError``, and a ``KeyError`` for lookups)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> item; refuses duplicate names; unknown names are clear errors.

    Parameters
    ----------
    kind
        What the items are, for messages (``"aggregation backend"``, ``"method"``).
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
        """The item called ``name``; an unknown name raises :meth:`unknown`'s error."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def unknown(self, name: object) -> Exception:
        """The error for an unknown ``name`` (it lists the registered names)."""
        return UnknownNameError(f"unknown {self.kind} {name!r}; choose one of {self.names()}.")

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
