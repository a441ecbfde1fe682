"""Argument types and parsers the ``fedsc`` commands share (``KEY=VALUE``, seeds, counts)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fedsc.errors import FedscInputError

__all__ = [
    "Choices",
    "DeprecatedFlag",
    "add_labels_key",
    "params",
    "parse_value",
    "positive",
    "seed_arg",
    "selector",
]


def parse_value(text: str) -> Any:
    """``1e-3`` -> float, ``8`` -> int, ``true`` -> bool, JSON lists, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def params(pairs: Sequence[str], flag: str = "--param", example: str = "mu=0") -> dict[str, Any]:
    """``KEY=VALUE`` pairs (values parsed by :func:`parse_value`) as a dict."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise FedscInputError(
                f"{flag} expects KEY=VALUE, got {pair!r} (e.g. {flag} {example})."
            )
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


class Choices:
    """argparse choices read from a registry when first needed (parsing ``run`` or help).

    Reading ``smpc.BACKENDS`` imports torch; the other subcommands should not pay for it.
    """

    def __init__(self, names: Callable[[], Sequence[str]]) -> None:
        self._names = names

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def seed_arg(text: str) -> int:
    """``--seed``: an integer in the range every seeded library accepts."""
    from fedsc.run.config import check_seed  # AnnData and the registries: start-up time

    value: Any = text.strip()
    if value.isdigit():
        value = int(value)
    else:
        try:
            value = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            pass
    try:
        return check_seed(value, "--seed")
    except FedscInputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--seed ")) from None


def positive(text: str) -> int:
    """A positive integer (``--workers``)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def selector(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """``--a``/``--b`` ``KEY=VALUE`` pairs of ``fedsc compare`` (values kept as text)."""
    if not pairs:
        raise FedscInputError(f"{flag} needs at least one KEY=VALUE (e.g. {flag} backend=crypten).")
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise FedscInputError(f"{flag} expects KEY=VALUE, got {pair!r}.")
        key, value = pair.split("=", 1)
        out[key] = value
    return out


class DeprecatedFlag(argparse.Action):
    """An old flag spelling: stored as the new flag's value, with a warning naming it."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        self.new = new
        kwargs.setdefault("help", f"deprecated spelling of {new}")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        """Store the value under the new flag's name; warn on stderr."""
        print(f"fedsc: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_labels_key(p: argparse.ArgumentParser) -> None:
    """``--labels-key`` (scvi-tools' name; ``--label-key`` still accepted, with a warning)."""
    p.add_argument(
        "--labels-key",
        dest="labels_key",
        metavar="KEY",
        default="cell_type",
        help="obs column holding each cell's type (default: %(default)s)",
    )
    p.add_argument(
        "--label-key", dest="labels_key", action=DeprecatedFlag, new="--labels-key",
        metavar="KEY", default=argparse.SUPPRESS,
    )  # fmt: skip
