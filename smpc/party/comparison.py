"""The parties' comparison protocol: a secret-shared argmax with CrypTen's primitives.

See docs/smpc.md (step 2 of the protocol) and docs/algorithms.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["distinct_argmax", "recording_openings", "secure_argmax"]


def secure_argmax(crypten: Any, shares: np.ndarray) -> tuple[np.ndarray, int, int]:
    """A party's share of the argmax of its ``(clients, columns)`` shares; bytes, rounds."""
    import torch

    crypten.reset_communication_stats()
    n_clients = shares.shape[0]
    # Encoded values are integers in the ring: precision 0 keeps every product exact.
    values = crypten.mpc.MPCTensor.from_shares(torch.from_numpy(shares), precision=0)
    # Ties go to the lowest client index: compare K*x + (K-1-i), public operations
    # on shares (local multiply, party 0 adds the constant), all keys distinct.
    offsets = torch.arange(n_clients - 1, -1, -1, dtype=torch.long).unsqueeze(1)
    keys = values * n_clients + offsets
    index = distinct_argmax(crypten, keys)
    stats = crypten.comm.get().get_communication_stats()
    share = np.ascontiguousarray(index._tensor.share.numpy(), dtype=np.int64)
    return share, int(stats["bytes"]), int(stats["rounds"])


#: CrypTen communicator methods through which a party receives values from the others.
_RECEIVING = ("all_reduce", "reduce", "gather", "all_gather", "broadcast", "recv", "scatter")


@contextlib.contextmanager
def recording_openings(communicator: Any, into: list[np.ndarray] | None) -> Iterator[None]:
    """Test seam: append to ``into`` every value ``communicator`` hands this party.

    Every value a CrypTen party learns from the other parties arrives through one of the
    communicator's collective or point-to-point calls (a ``reveal`` is an ``all_reduce``
    or ``reduce`` of the shares; Beaver's masked operands and the masked bit of
    ``B2A_single_bit`` too); party 0 also receives the trusted dealer's correlated
    randomness through it (a ``broadcast``: fresh random values). With
    ``into`` a list, each such result is copied (flat int64) in call order while the
    block runs; with ``None`` nothing changes. A secure protocol opens only values masked
    by fresh randomness: the same inputs open different values in two runs
    (tests/smpc/test_privacy_mutants.py checks it for ``argmax``).
    """
    if into is None:
        yield
        return

    def keep(value: Any) -> None:
        if value is None:
            return
        if isinstance(value, (list, tuple)):
            for item in value:
                keep(item)
            return
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        into.append(np.array(array, dtype=np.int64).ravel())

    def wrapped(call: Any) -> Any:
        def receive(*args: Any, **kwargs: Any) -> Any:
            result = call(*args, **kwargs)
            keep(result)
            return result

        return receive

    patched = [name for name in _RECEIVING if hasattr(communicator, name)]
    for name in patched:  # instance attributes shadow the class's methods while recording
        setattr(communicator, name, wrapped(getattr(communicator, name)))
    try:
        yield
    finally:
        for name in patched:
            delattr(communicator, name)


def _less_than_zero(crypten: Any, values: Any) -> Any:
    """Secret-shared ``values < 0`` (0/1, precision 0) of an arithmetic ``MPCTensor``.

    CrypTen's own comparison converts the arithmetic shares to binary ones by adding the
    parties' shares with a 64-bit adder circuit per share after the first (two for three
    parties, ~7 rounds of AND gates each). Hand-written here with a carry-save step:
    three binary shares become two with one round of AND gates (``a ^ b ^ c`` and the
    shifted majority ``(a & b) ^ (c & (a ^ b))``, both ANDs in one batch), so one adder
    remains. The sign bit goes back to an arithmetic share as in CrypTen
    (``B2A_single_bit``: the bit is revealed only masked by a random bit from the dealer).
    """
    from crypten.mpc.primitives import BinarySharedTensor
    from crypten.mpc.primitives.beaver import B2A_single_bit

    share = values._tensor.share
    world = crypten.comm.get().get_world_size()
    # Party i's arithmetic share as an XOR-sharing (zero-sharing from seeds: no traffic).
    parts = [BinarySharedTensor(share, src=i) for i in range(world)]
    while len(parts) > 2:
        a, b, c = parts[-3:]
        del parts[-3:]
        a_xor_b = a ^ b
        ands = BinarySharedTensor.stack([a, c]) & BinarySharedTensor.stack([b, a_xor_b])
        first = BinarySharedTensor.from_shares(ands.share[0], precision=0)
        second = BinarySharedTensor.from_shares(ands.share[1], precision=0)
        parts += [a_xor_b ^ c, (first ^ second) << 1]
    total = parts[0] + parts[1] if len(parts) == 2 else parts[0]
    sign = (total >> 63) & 1  # the sign bit of the 64-bit ring element
    bit = B2A_single_bit(sign)
    return crypten.mpc.MPCTensor.from_shares(bit.share, precision=0)


def distinct_argmax(crypten: Any, keys: Any) -> Any:
    """Secret-shared per-column argmax of ``keys`` (rows x columns) whose keys are distinct.

    Hand-written instead of CrypTen's ``argmax(dim=0, one_hot=False)``: with distinct keys
    the winner is unique, so CrypTen's random tie-break (``weighted_index``: a cumulative
    sum, random numbers and a second comparison of the whole tensor) only doubled the
    communication rounds. Here one batched comparison covers the K(K-1)/2 pairs
    (``key_i > key_j`` for i < j; the reverse order is ``1 -`` it, a local operation);
    row i wins where it beats all K-1 others, the product of those K-1 bits
    (ceil(log2(K-1)) rounds of Beaver multiplications, all rows at once); the index is
    ``sum_i i * win_i`` (local). Everything stays secret-shared: the caller reveals
    only the index, as before.

    Parameters
    ----------
    crypten
        The initialised CrypTen module.
    keys
        ``MPCTensor`` of integer keys at precision 0, distinct within every column.

    Returns
    -------
    MPCTensor of the winning row per column (precision 0).
    """
    import torch

    n_rows = int(keys.size(0))
    if n_rows == 1:
        return keys[0] * 0
    first, second = torch.triu_indices(n_rows, n_rows, 1)
    beats = _less_than_zero(crypten, keys[second] - keys[first])  # key_first > key_second
    both = crypten.cat([beats, 1 - beats])  # then key_second > key_first
    pairs = int(first.numel())
    terms: list[list[int]] = [[] for _ in range(n_rows)]
    for p, (i, j) in enumerate(zip(first.tolist(), second.tolist(), strict=True)):
        terms[i].append(p)  # row i beats row j
        terms[j].append(pairs + p)  # row j beats row i
    order = torch.tensor([p for row in terms for p in row], dtype=torch.long)
    factors = both.index_select(0, order).view(n_rows, n_rows - 1, *keys.size()[1:])
    wins = factors.prod(1)  # one-hot over rows, per column
    weights = torch.arange(n_rows, dtype=torch.long).view(n_rows, *([1] * (keys.dim() - 1)))
    return (wins * weights).sum(0)
