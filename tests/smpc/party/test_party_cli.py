"""One party parser: ``fedsc party`` and ``python -m smpc.party`` read the same flags."""

from __future__ import annotations

import argparse

import pytest

import smpc.party.cli
import smpc.party.process
from fedsc import cli
from smpc.options import MODES, PROVIDERS, CryptenOptions
from smpc.party.cli import PARTY_FIELDS, build_parser, party_argv, party_options

ARGV = ["--rank", "1", "--rendezvous", "tcp://10.0.0.1:29500", "--listen", "0.0.0.0:6000"]
ARGV += ["--mode", "debug", "--provider", "TFP", "--precision-bits", "20", "--seed", "3"]
ARGV += ["--sites", "a,b,c", "--startup-timeout", "7", "--gloo-interface", "eth1"]


def _party_settings(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in vars(build_parser().parse_args([]))}


def test_fedsc_party_parses_as_smpc_party_and_serves(monkeypatch):
    seen: list[argparse.Namespace] = []
    run = smpc.party.cli.run
    monkeypatch.setattr(smpc.party.cli, "run", seen.append)
    assert cli.main(["party", *ARGV]) == 0
    assert _party_settings(seen[0]) == vars(build_parser().parse_args(ARGV))

    served: list[dict] = []
    monkeypatch.setattr(
        smpc.party.process, "serve", lambda *a, **kw: served.append({"args": a, **kw})
    )
    run(seen[0])
    assert served[0]["args"] == (1, None, "tcp://10.0.0.1:29500")
    want = {"listen": ("0.0.0.0", 6000), "mode": "debug", "provider": "TFP", "seed": 3}
    want |= {"precision_bits": 20, "startup_timeout": 7.0, "gloo_interface": "eth1"}
    want |= {"agreed_clients": ["a", "b", "c"], "identity": None, "roster": None}
    assert {k: served[0][k] for k in want} == want


def test_party_defaults_and_choices_are_the_options_object(capsys):
    defaults = build_parser().parse_args([])
    options = CryptenOptions()
    assert (defaults.mode, defaults.provider) == (options.mode, options.provider)
    assert defaults.precision_bits == options.precision_bits
    for flag, choices in (("--mode", MODES), ("--provider", PROVIDERS)):
        with pytest.raises(SystemExit):
            build_parser().parse_args([flag, "nope"])
        err = capsys.readouterr().err
        assert "nope" in err and all(c in err for c in choices), err


def test_party_refuses_tfp_in_secure_mode_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        smpc.party.main(["--rank", "0", "--rendezvous", "tcp://h:1", "--provider", "TFP"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "rank 0" in err and "TFP is refused in secure mode" in err


def _party_fields(options: CryptenOptions) -> dict:
    return {f: getattr(options, f) for f in PARTY_FIELDS}


def test_party_argv_carries_the_coordinators_options_through_the_one_parser():
    options = CryptenOptions(parties=4, mode="debug", provider="TFP", seed=9, precision_bits=20)
    options = options.replace(startup_timeout=7.5, transport="pipe")  # the last: not a party's
    argv = party_argv(2, "tcp://h:1", options, listen=("h", 6000), sites=["a", "b"])
    parsed = build_parser().parse_args(argv)
    assert _party_fields(party_options(parsed)) == _party_fields(options)
    assert (parsed.rank, parsed.listen, parsed.sites) == (2, ("h", 6000), "a,b")
    dealer = build_parser().parse_args(party_argv(3, "tcp://h:1"))  # the defaults
    assert _party_fields(party_options(dealer)) == _party_fields(CryptenOptions(parties=3))
    assert dealer.listen is None


def test_party_refuses_a_seed_in_secure_mode_as_the_aggregator_does(capsys, monkeypatch):
    monkeypatch.setattr(smpc.party.process, "serve", lambda *a, **kw: None)
    with pytest.raises(SystemExit) as exit_info:
        smpc.party.main(["--rank", "1", "--rendezvous", "tcp://h:1", "--seed", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "rank 1" in err and "seed is refused in secure mode" in err
