"""The CrypTen backend's options, written and checked once (no torch, no CrypTen).

:class:`CryptenOptions` is what :class:`smpc.crypten_backend.CryptenAggregator` is built
from (its keyword arguments fill one), what ``fedsc``'s run configuration checks a user's
``backend_options`` with before any data is loaded, and where the party command line
(:mod:`smpc.party_cli`) takes its choices from. A party process checks its mode and
provider with :func:`check_mode_provider`, the same rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MASK_SOURCES",
    "MODES",
    "PROVIDERS",
    "START_METHODS",
    "TRANSPORTS",
    "CryptenOptions",
    "check_mode_provider",
]

#: ``"secure"`` (OS randomness, trusted dealer) or ``"debug"`` (seeded, NOT private).
MODES = ("secure", "debug")
#: CrypTen's source of correlated randomness: a trusted dealer, or party 0 (debug only).
PROVIDERS = ("TTP", "TFP")
#: How local parties run: shared-memory files, pipes, or threads of this process.
TRANSPORTS = ("shm", "pipe", "threads")
#: Where masks come from: AES-256-CTR from a 256-bit key, or the OS CSPRNG in full.
MASK_SOURCES = ("prng", "urandom")
#: ``multiprocessing`` start methods for local parties.
START_METHODS = ("forkserver", "spawn", "fork")


def check_mode_provider(mode: str, provider: str) -> None:
    """Refuse an unknown mode or provider, and the dealer-less provider in secure mode."""
    if mode not in MODES:
        raise ValueError(f"mode must be {_either(MODES)}, got {mode!r}.")
    if provider not in PROVIDERS:
        raise ValueError(
            f"provider must be {_either(PROVIDERS)} (TTP: a trusted dealer), got {provider!r}."
        )
    if mode == "secure" and provider == "TFP":
        raise ValueError(
            "provider TFP is refused in secure mode: party 0 would generate all the "
            "randomness and could recover the other parties' shares; use provider TTP "
            "(the default) or mode debug."
        )


@dataclass(frozen=True)
class CryptenOptions:
    """Every option of the CrypTen backend, validated when created.

    The fields are :class:`~smpc.crypten_backend.CryptenAggregator`'s parameters (see its
    docstring for each); a bad value raises ``ValueError`` naming the option, the value
    and the choices.
    """

    parties: int = 3
    mode: str = "secure"
    seed: int | None = None
    timeout: float = 30.0
    provider: str = "TTP"
    precision_bits: int = 16
    rendezvous: str | None = None
    sum_precision_bits: int = 24
    party_addresses: tuple[tuple[str, int], ...] | None = None
    authkey: bytes | None = None
    start_method: str = "forkserver"
    startup_timeout: float = 120.0
    record_received: bool = False
    mask_source: str = "prng"
    transport: str = "shm"
    warm: bool | None = None
    prepare_masks: bool | None = None

    def __post_init__(self) -> None:
        check_mode_provider(self.mode, self.provider)
        if self.mode == "secure" and self.seed is not None:
            raise ValueError(
                "seed is refused in secure mode: seeded masks are predictable; use "
                "mode debug for reproducible (non-private) runs."
            )
        if int(self.parties) < 2:
            raise ValueError(f"parties must be >= 2 for secret sharing, got {self.parties}.")
        if not 0 <= int(self.precision_bits) <= 32:
            raise ValueError(f"precision_bits must be in 0..32, got {self.precision_bits}.")
        if not 0 <= int(self.sum_precision_bits) <= 40:
            raise ValueError(f"sum_precision_bits must be in 0..40, got {self.sum_precision_bits}.")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {self.timeout}.")
        if self.transport not in TRANSPORTS:
            raise ValueError(
                f"transport must be one of {list(TRANSPORTS)}, got {self.transport!r}."
            )
        if self.mask_source not in MASK_SOURCES:
            raise ValueError(
                f"mask_source must be one of {list(MASK_SOURCES)}, got {self.mask_source!r}."
            )
        if self.start_method not in START_METHODS:
            raise ValueError(
                f"start_method must be one of {list(START_METHODS)}, got {self.start_method!r}."
            )
        normal: dict[str, Any] = {
            "parties": int(self.parties),
            "precision_bits": int(self.precision_bits),
            "sum_precision_bits": int(self.sum_precision_bits),
            "timeout": float(self.timeout),
            # The debug seed defaults to 0; secure mode has none.
            "seed": (0 if self.seed is None else int(self.seed)) if self.mode == "debug" else None,
            "record_received": bool(self.record_received),
        }
        if self.party_addresses is not None:
            normal["party_addresses"] = tuple((str(h), int(p)) for h, p in self.party_addresses)
        for name, value in normal.items():
            object.__setattr__(self, name, value)  # frozen: normalised once, here

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> CryptenOptions:
        """Options from a mapping (e.g. a run configuration's ``backend_options``).

        Unknown names raise ``ValueError`` listing the valid ones.
        """
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown crypten option(s) {unknown}; valid: {sorted(cls.names())}.")
        return cls(**dict(options))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in the aggregator's parameter order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> CryptenOptions:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)


def _either(choices: Sequence[str]) -> str:
    """``'a', 'b' or 'c'``: the choices, for a message."""
    quoted = [repr(c) for c in choices]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
