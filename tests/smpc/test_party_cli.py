"""``fedsc party`` passes every setting that must match the coordinator to the party."""

from __future__ import annotations

import smpc.party
from fedsc import cli


def test_fedsc_party_forwards_mode_provider_and_precision(monkeypatch):
    seen: list[list[str]] = []
    monkeypatch.setattr(smpc.party, "main", lambda argv: seen.append(argv))
    argv = ["party", "--rank", "1", "--rendezvous", "tcp://10.0.0.1:29500"]
    argv += ["--listen", "0.0.0.0:6000", "--mode", "debug", "--provider", "TFP"]
    argv += ["--precision-bits", "20", "--seed", "3"]
    argv += ["--sites", "a,b,c", "--identity", "rank1.key", "--roster", "roster.json"]
    assert cli.main(argv) == 0
    forwarded = seen[0]
    parsed = dict(zip(forwarded[::2], forwarded[1::2], strict=True))
    assert parsed == {
        "--rank": "1",
        "--world-size": "3",
        "--rendezvous": "tcp://10.0.0.1:29500",
        "--mode": "debug",
        "--provider": "TFP",
        "--precision-bits": "20",
        "--listen": "0.0.0.0:6000",
        "--seed": "3",
        "--sites": "a,b,c",
        "--identity": "rank1.key",
        "--roster": "roster.json",
    }


def test_fedsc_party_defaults_match_the_aggregator_defaults(monkeypatch):
    from smpc.crypten_backend import CryptenAggregator

    seen: list[list[str]] = []
    monkeypatch.setattr(smpc.party, "main", lambda argv: seen.append(argv))
    cli.main(["party", "--rank", "3", "--rendezvous", "tcp://h:1"])
    parsed = dict(zip(seen[0][::2], seen[0][1::2], strict=True))
    defaults = CryptenAggregator.__init__.__kwdefaults__ or {}
    positional = dict(
        zip(
            CryptenAggregator.__init__.__code__.co_varnames[1:8],
            CryptenAggregator.__init__.__defaults__ or (),
            strict=False,
        )
    )
    assert parsed["--provider"] == positional["provider"] == "TTP"
    assert int(parsed["--precision-bits"]) == positional["precision_bits"] == 16
    assert parsed["--mode"] == positional["mode"] == "secure"
    assert "transport" in defaults
