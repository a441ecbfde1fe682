"""Keys of deployed sites' sealed shares: fresh per site, party, operation and deployment.

A constant mask key would let party 0 unmask every site's share alone (the key is in the
code); a constant sealing secret would let anyone open the shares the coordinator relays.
Sealed blobs look uniform either way, so the deployment tests cannot see it: these tests
open the shares with the keys the deployment hands out and look at what is inside.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedsc.deploy.client_app import seal_for_parties
from fedsc.deploy.local import LocalDeployment
from smpc import sealed, sharing

PARTIES = 3
BITS = 24
NAMES = ["site_a", "site_b"]
CONSTANT = bytes(sharing.KEY_BYTES)  # what a mutant would use: all zeros


def _key_files(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[bytes]]:
    """The party keys a LocalDeployment with parties writes for each site (nothing started)."""
    dep = LocalDeployment(
        {name: workdir / f"{name}.h5ad" for name in NAMES}, workdir, workers=False, parties=True
    )
    monkeypatch.setattr(dep, "_spawn", lambda name, args: None)  # no SuperLink, no SuperNode
    with socket.socket() as link:  # stands in for the SuperLink start() waits for
        link.bind(("127.0.0.1", dep.port))
        link.listen()
        dep.start(timeout=10)
    return {
        name: [bytes.fromhex(k) for k in (workdir / f"party-keys-{name}").read_text().split()]
        for name in NAMES
    }


def test_each_deployment_hands_every_site_its_own_key_at_each_party(tmp_path, monkeypatch):
    first = _key_files(tmp_path / "one", monkeypatch)
    second = _key_files(tmp_path / "two", monkeypatch)
    keys = [k for files in (first, second) for site in NAMES for k in files[site]]
    assert len(keys) == 2 * len(NAMES) * PARTIES
    assert len(set(keys)) == len(keys)  # per deployment, site and party
    constant = [
        sealed.client_key(sealed.party_secret(CONSTANT, r), name)
        for r in range(PARTIES)
        for name in NAMES
    ]
    assert not set(keys) & set(constant)


def _seal(name: str, key_file: Path, values: np.ndarray, op: str) -> tuple[str, list[bytes]]:
    """What site ``name`` sends for one operation: its context and one sealed blob per party."""
    context = json.dumps({"op": op, "clients": NAMES})
    node = SimpleNamespace(node_config={"party-keys": str(key_file), "site": name})
    params = {"parties": PARTIES, "context": context, "bits": BITS}
    _, arrays = seal_for_parties(node, params, {"x": values}, False)  # type: ignore[arg-type]
    return context, [arrays[f"sealed/{r}"].tobytes() for r in range(PARTIES)]


def test_deployed_sites_seal_fresh_mask_keys_that_unmask_nothing_alone(tmp_path, monkeypatch):
    keys = _key_files(tmp_path, monkeypatch)
    values = np.full(1024, 3.5)  # the same value at every site and in every operation
    encoded = sharing.encode(values, BITS)
    mask_keys, nonces = [], []
    for op in ("op-1", "op-2"):
        for name in NAMES:
            context, blobs = _seal(name, tmp_path / f"party-keys-{name}", values, op)
            for r, blob in enumerate(blobs):
                other_site = keys[NAMES[1 - NAMES.index(name)]][r]
                from_constant = sealed.client_key(sealed.party_secret(CONSTANT, r), name)
                for wrong in (CONSTANT, from_constant, other_site):
                    with pytest.raises(sealed.SealError):
                        sealed.open_sealed(wrong, blob, context, name, r)
            payloads = [
                sealed.open_sealed(keys[name][r], blob, context, name, r)
                for r, blob in enumerate(blobs)
            ]
            first = np.frombuffer(payloads[0], dtype=np.int64)
            masks = [sharing.expand_key(k, values.size) for k in payloads[1:]]
            np.testing.assert_array_equal(sharing.reconstruct([first, *masks]), encoded)
            # party 0 alone: its share is uniform over Z/2^64, nothing of the value shows,
            # and no constant key unmasks it
            assert not np.any(first == encoded)
            bits = (first.view(np.uint64)[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
            assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.1)
            guess = first + (PARTIES - 1) * sharing.expand_key(CONSTANT, values.size)
            assert not np.any(guess == encoded)
            mask_keys += payloads[1:]
            nonces += [blob[: sealed.NONCE_BYTES] for blob in blobs]
    # fresh for every site, party and operation (an AES-GCM nonce never repeats either)
    assert len(set(mask_keys)) == len(mask_keys) == 2 * len(NAMES) * (PARTIES - 1)
    assert len(set(nonces)) == len(nonces)
