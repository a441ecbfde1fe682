"""What a LocalDeployment hands its parties, dealer and sites before a run.

Each rank (parties 0..2, dealer 3) gets its own identity key and every rank the roster
of their public keys, so the rendezvous admits a rank only with that rank's key (the
coordinator's connection key is not enough, tests/smpc/test_rank_identity.py); the
parties and the sites get the agreed site list. Nothing is started: the processes'
command lines and environments are read.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedsc.deploy import local
from fedsc.deploy.local import LocalDeployment
from fedsc.deploy.site import AGREED_SITES_ENV, QUORUM_ENV
from fedsc.errors import FedscInputError
from smpc import handshake
from smpc.options import CryptenOptions
from smpc.party.cli import PARTY_FIELDS, build_parser, party_options

NAMES = ["site_b", "site_a", "site_c"]


def _started(workdir: Path, monkeypatch: pytest.MonkeyPatch, **options) -> tuple:
    """A deployment's spawned processes (name -> env) and its parties' argv, nothing run."""
    dep = LocalDeployment(
        {n: workdir / f"{n}.h5ad" for n in NAMES}, workdir, parties=True, **options
    )
    spawned: dict[str, dict] = {}  # process name -> its environment
    real_spawn = dep._spawn

    def spawn(name, args):
        monkeypatch.setattr(
            local.subprocess, "Popen", lambda a, env, **kw: spawned.__setitem__(name, env)
        )
        real_spawn(name, args)

    monkeypatch.setattr(dep, "_spawn", spawn)
    with socket.socket() as link:  # stands in for the SuperLink start() waits for
        link.bind(("127.0.0.1", dep.port))
        link.listen()
        dep.start(timeout=10)
    party_args: list[list[str]] = []
    monkeypatch.setattr(local.subprocess, "Popen", lambda a, env, **kw: party_args.append(a))
    dep._start_parties(b"\0" * 32)
    return dep, spawned, party_args


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_each_rank_gets_its_own_identity_bound_to_it_in_the_roster(tmp_path, monkeypatch):
    dep, _, party_args = _started(tmp_path, monkeypatch)
    assert [int(_flag(a, "--rank")) for a in party_args] == [0, 1, 2, 3]  # 3: the dealer
    roster = handshake.load_roster(tmp_path / "roster.json")
    assert sorted(roster) == [0, 1, 2, 3] and len(set(roster.values())) == 4
    for args in party_args:
        rank = int(_flag(args, "--rank"))
        assert _flag(args, "--roster") == str(tmp_path / "roster.json")
        identity = Path(_flag(args, "--identity"))
        assert identity.stat().st_mode & 0o077 == 0  # the rank's secret: owner only
        private = Ed25519PrivateKey.from_private_bytes(handshake.load_identity(identity))
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert roster[rank] == public  # bound to its own rank, no other
        handshake.Identities(handshake.load_identity(identity), roster).check(rank)
        with pytest.raises(ValueError, match="not rank"):
            handshake.Identities(handshake.load_identity(identity), roster).check((rank + 1) % 4)
    # the coordinator's environment holds the connection key and no identity
    assert handshake.IDENTITY_ENV not in dep.env and "SMPC_AUTHKEY" in dep.env
    # a fresh deployment: fresh keys
    _started(tmp_path / "two", monkeypatch)
    again = handshake.load_roster(tmp_path / "two" / "roster.json")
    assert not set(again.values()) & set(roster.values())


def test_parties_and_sites_get_the_agreed_sites(tmp_path, monkeypatch):
    _, spawned, party_args = _started(tmp_path, monkeypatch)
    agreed = ",".join(sorted(NAMES))
    assert all(_flag(a, "--sites") == agreed for a in party_args)
    sites = {n: env for n, env in spawned.items() if n.startswith(("site-", "worker-"))}
    assert len(sites) == 2 * len(NAMES)
    assert all(env[AGREED_SITES_ENV] == agreed and QUORUM_ENV not in env for env in sites.values())
    assert AGREED_SITES_ENV not in spawned["superlink"]
    # a quorum below every agreed site (held-out sites): the sites get it, and the parties
    # agree per phase (an operation of the training phase lists fewer than all sites)
    _, spawned, party_args = _started(tmp_path / "q", monkeypatch, quorum=2)
    assert all(_flag(a, "--sites") is None for a in party_args)
    assert spawned["worker-site_a"][QUORUM_ENV] == "2"
    with pytest.raises(FedscInputError, match="quorum 1"):
        LocalDeployment({n: tmp_path / n for n in NAMES}, tmp_path / "bad", quorum=1)


def test_the_parties_flags_come_from_the_one_options_object(tmp_path, monkeypatch):
    options = CryptenOptions(parties=2, mode="debug", seed=5, precision_bits=20)
    monkeypatch.setattr(local, "PARTY_OPTIONS", options.replace(startup_timeout=9.0))
    dep, _, party_args = _started(tmp_path, monkeypatch)
    assert [int(_flag(a, "--rank")) for a in party_args] == [0, 1, 2]  # 2: the dealer
    for args in party_args:
        assert args[1:3] == ["-m", "smpc.party"]
        got = party_options(build_parser().parse_args(args[3:]))  # as the party reads them
        assert {f: getattr(got, f) for f in PARTY_FIELDS} == {
            f: getattr(local.PARTY_OPTIONS, f) for f in PARTY_FIELDS
        }
    assert len(dep.party_addresses.split(",")) == 2
