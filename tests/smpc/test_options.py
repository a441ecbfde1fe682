"""The CrypTen backend's options: one object, checked once, used by every caller."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from smpc.crypten_backend import CryptenAggregator
from smpc.options import MASK_SOURCES, MODES, PROVIDERS, TRANSPORTS, CryptenOptions


@pytest.mark.parametrize(
    ("option", "choices"),
    [
        ("mode", MODES),
        ("provider", PROVIDERS),
        ("transport", TRANSPORTS),
        ("mask_source", MASK_SOURCES),
    ],
)
def test_a_bad_choice_names_the_option_the_value_and_every_choice(option, choices):
    with pytest.raises(ValueError) as err:
        CryptenOptions(**{option: "nope"})
    message = str(err.value)
    assert message.startswith(f"{option} must be") and "'nope'" in message
    assert all(repr(c) in message for c in choices), message


def test_secure_mode_refuses_tfp_and_a_seed_and_debug_defaults_the_seed():
    with pytest.raises(ValueError, match="TFP is refused in secure mode"):
        CryptenOptions(provider="TFP")
    with pytest.raises(ValueError, match="seed is refused in secure mode"):
        CryptenOptions(seed=1)
    assert CryptenOptions(mode="debug", provider="TFP").seed == 0
    assert CryptenOptions(parties=3.0, party_addresses=[["h", "7"]]).party_addresses == (("h", 7),)


def test_the_aggregator_takes_every_option_with_the_same_default():
    params = inspect.signature(CryptenAggregator).parameters
    defaults = {n: p.default for n, p in params.items() if n != "options"}
    fields = {f.name: f.default for f in dataclasses.fields(CryptenOptions)}
    assert defaults == fields


def test_the_aggregator_runs_with_the_options_object_or_keywords_not_both():
    options = CryptenOptions(transport="threads", parties=2)
    with CryptenAggregator(options=options) as agg:
        assert agg.options is options and agg.parties == 2 and agg.transport == "threads"
        assert agg.sum([[1.0, 2.0], [3.0, 4.0]]).tolist() == [4.0, 6.0]
    with pytest.raises(ValueError, match="not both"):
        CryptenAggregator(parties=2, options=options)


def test_the_pools_and_the_partys_defaults_are_the_options():
    from smpc.party.process import serve
    from smpc.party_pool import PoolSettings

    assert PoolSettings() == PoolSettings.from_options(CryptenOptions())
    options = CryptenOptions(parties=4, mode="debug", provider="TFP", seed=7, precision_bits=20)
    options = options.replace(record_received=True, transport="pipe", start_method="spawn")
    settings = PoolSettings.from_options(options)
    shared = [f.name for f in dataclasses.fields(PoolSettings)]
    assert {n: getattr(settings, n) for n in shared} == {n: getattr(options, n) for n in shared}
    remote = PoolSettings.from_options(CryptenOptions(party_addresses=[("h", 1), ("h", 2)]))
    assert remote.transport == "pipe"  # remote parties: over their connections
    params = inspect.signature(serve).parameters
    for name in ("provider", "mode", "precision_bits", "startup_timeout"):
        assert params[name].default == getattr(CryptenOptions(), name), name
