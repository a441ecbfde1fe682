"""Issue 23: DP, mechanisms and attacks go through one schema, before any data are read.

Every entry point (RunConfig/YAML, ``fedsc run --param``/``--mechanism``) reaches the same
checks: a setting is used as written or refused naming the key and the fix; nothing is
skipped. CLI cases load no data (``no_data``), write nothing and leave nothing running.
"""

from __future__ import annotations

import pytest
from _checks import has_words, record
from _helpers.cli import run_cli

from fedsc.errors import FedscInputError
from fedsc.run.config import RunConfig, check_holdout_batches

DP = {"level": "client", "target_epsilon": 4, "clip": 1.0, "delta": 1e-3}


def refused(case: str, given: str, words: list[str], **settings) -> str:
    with pytest.raises(FedscInputError) as info:
        RunConfig(**settings)
    message = str(info.value)
    has_words(message, words)
    record("privacy settings", case, given, "FedscInputError (CLI: 2)", message)
    return message


# (case id, settings, what the user wrote, words: the problem and the fix)
DP_CASES = [
    (
        "dp-noise-multiplier-true",
        {"method": "fedscgen", "dp": {"level": "client", "noise_multiplier": True}},
        "dp: {noise_multiplier: true}",
        ["dp.noise_multiplier must be a number", "True", "e.g. 1.0"],
    ),
    (
        "dp-delta-word",
        {"method": "fedscgen", "dp": {**DP, "delta": "small"}},
        "dp: {delta: small}",
        ["dp.delta must be a number", "'small'", "e.g. 1e-5"],
    ),
    (
        "dp-delta-above-one",
        {"method": "fedscgen", "dp": {**DP, "delta": 2}},
        "dp: {delta: 2}",
        ["dp.delta must be in (0, 1)", "e.g. 1e-5"],
    ),
    (
        "dp-epsilon-huge",
        {"method": "fedscgen", "dp": {**DP, "target_epsilon": 1e9}},
        "dp: {target_epsilon: 1e9}",
        ["too large", "Choose target_epsilon in [0.01, 1000]", "noise_multiplier directly"],
    ),
    (
        "dp-epsilon-tiny",
        {"method": "fedscgen", "dp": {**DP, "target_epsilon": 1e-9}},
        "dp: {target_epsilon: 1e-9}",
        ["too small", "Choose target_epsilon in [0.01, 1000]"],
    ),
    (
        "dp-epsilon-infinite",
        {"method": "fedscgen", "dp": {**DP, "target_epsilon": float("inf")}},
        "dp: {target_epsilon: .inf}",
        ["dp.target_epsilon must be finite"],
    ),
    (
        "dp-not-a-mapping",
        {"method": "fedscgen", "dp": "yes"},
        "dp: yes",
        ["dp must be a mapping", "e.g. dp: {level: client"],
    ),
    (
        "dp-false",
        {"method": "fedscgen", "dp": False},
        "dp: false",
        ["dp must be a mapping", "drop dp or write dp: null"],
    ),
    (
        "dp-unknown-key",
        {"method": "fedscgen", "dp": {**DP, "epsilon": 4}},
        "dp: {epsilon: 4}",
        ["unknown key(s) ['epsilon']", "target_epsilon"],
    ),
    (
        "dp-level-unknown",
        {"method": "fedscgen", "dp": {**DP, "level": "sample"}},
        "dp: {level: sample}",
        ["dp.level must be one of ['client', 'cell', 'donor']", "'sample'"],
    ),
    (
        "dp-both-levels",
        {"method": "fedscgen", "dp": {**DP, "level": ["client", "cell"]}},
        "dp: {level: [client, cell]}",
        ["one level per run", "level: client or level: cell"],
    ),
    (
        "dp-clip-text",
        {"method": "fedscgen", "dp": {**DP, "clip": "abc"}},
        "dp: {clip: abc}",
        ["dp.clip must be a number", "'abc'"],
    ),
    (
        "dp-accountant-unknown",
        {"method": "fedscgen", "dp": {**DP, "accountant": "moments"}},
        "dp: {accountant: moments}",
        ["dp.accountant must be one of ['rdp', 'pld']"],
    ),
    (
        "dp-simulated-text",
        {"method": "fedscgen", "dp": {**DP, "simulated": "yes"}},
        "dp: {simulated: yes}",
        ["dp.simulated must be true or false"],
    ),
    (
        "dp-no-sigma-no-epsilon",
        {"method": "fedscgen", "dp": {"level": "client", "noise_multiplier": None}},
        "dp: {noise_multiplier: null}",
        ["give noise_multiplier", "or target_epsilon"],
    ),
    (
        "dp-cell-on-scbatchprox",
        {"method": "scbatchprox", "dp": {**DP, "level": "cell"}},
        "scbatchprox, dp: {level: cell}",
        ["fedscgen only", "level: client"],
    ),
    (
        "params-dp-noise-true",
        {"method": "fedscgen", "params": {"dp": {"level": "client", "noise_multiplier": True}}},
        "params: {dp: {noise_multiplier: true}}",
        ["dp.noise_multiplier must be a number", "True"],
    ),
    (
        "dp-with-scenario",
        {
            "method": "scbatchprox",
            "scenario": "cumulative",
            "stages": [["indrop"], ["celseq"]],
            "dp": DP,
        },
        "dp with scenario: cumulative",
        ["cannot be combined with the dataset-evolution scenario", "drop dp or the scenario"],
    ),
]


@pytest.mark.parametrize("case, settings, given, words", DP_CASES, ids=[c[0] for c in DP_CASES])
def test_dp_setting_refused_before_any_data(case, settings, given, words):
    refused(case, given, words, **settings)


def test_dp_numbers_written_as_text_are_read_as_numbers():
    """PyYAML reads ``1e-3`` as text: it is the number it spells (as params are)."""
    cfg = RunConfig("fedscgen", dp={**DP, "delta": "1e-3"})
    assert cfg.dp is not None and cfg.dp["delta"] == 1e-3
    # a number stays as written: run ids of earlier runs do not change
    kept = RunConfig("fedscgen", dp=DP).dp
    assert kept is not None and type(kept["target_epsilon"]) is int and kept["clip"] == 1.0


# ------------------------------------------------------------------------------ mechanisms
MECHANISM_CASES = [
    (
        "mechanism-option-unknown",
        [{"clip": {"norm": 1.0}}],
        "mechanisms: [{clip: {norm: 1.0}}]",
        ["unknown option(s) ['norm']", "valid options: ['max_norm']", "--mechanism clip:"],
    ),
    (
        "mechanism-option-missing",
        ["clip"],
        "mechanisms: [clip]",
        ["needs option(s) ['max_norm']", "{clip: {max_norm: ...}}", "--mechanism clip:max_norm="],
    ),
    (
        "quantize-step-negative",
        [{"quantize": {"step": -1}}],
        "mechanisms: [{quantize: {step: -1}}]",
        ["mechanism quantize: step must be positive", "--mechanism quantize:step="],
    ),
    (
        "quantize-step-true",
        [{"quantize": {"step": True}}],
        "mechanisms: [{quantize: {step: true}}]",
        ["option step expects float", "True"],
    ),
    (
        "quantize-stochastic-text",
        [{"quantize": {"step": 0.01, "stochastic": "maybe"}}],
        "mechanisms: [{quantize: {step: 0.01, stochastic: maybe}}]",
        ["option stochastic expects bool", "'maybe'"],
    ),
    (
        "clip-norm-zero",
        [{"clip": {"max_norm": 0}}],
        "mechanisms: [{clip: {max_norm: 0}}]",
        ["max_norm must be positive"],
    ),
    (
        "mechanism-options-not-a-mapping",
        [{"clip": 1.0}],
        "mechanisms: [{clip: 1.0}]",
        ["options must be a mapping", "{clip: {max_norm: 1.0}}"],
    ),
    (
        "mechanism-not-a-name",
        [3],
        "mechanisms: [3]",
        ["a mechanism must be a name", "{clip: {max_norm: 1.0}}", "--mechanism clip:max_norm=1.0"],
    ),
    (
        "mechanism-gaussian",
        [{"gaussian": {"noise_multiplier": 1.0, "clip": 1.0}}],
        "mechanisms: [{gaussian: ...}]",
        ["without its accounting", "use dp: {level: client"],
    ),
]


@pytest.mark.parametrize(
    "case, mechanisms, given, words", MECHANISM_CASES, ids=[c[0] for c in MECHANISM_CASES]
)
def test_mechanism_refused_before_any_data(case, mechanisms, given, words):
    refused(case, given, words, method="scbatchprox", mechanisms=mechanisms)


def test_documented_mechanism_form_is_applied_at_run_time():
    """``{clip: {max_norm}}`` passed the config check, then failed at run time ("mechanism
    mapping ... has no 'name'") unless dp or attacks were set: the run's aggregator now
    applies it (the update is clipped to norm 1, and the ledger names the mechanism)."""
    import numpy as np

    from fedsc.backend import aggregator_for

    cfg = RunConfig("scbatchprox", mechanisms=[{"clip": {"max_norm": 1.0}}])
    with aggregator_for(cfg.backend, cfg.backend_options, cfg.mechanisms) as agg:
        mean = agg.weighted_mean([np.full(4, 10.0), np.zeros(4)], [1.0, 1.0], reference=np.zeros(4))
    assert np.isclose(np.linalg.norm(mean), 0.5)  # (clip(10s) + 0) / 2: norm 1/2
    assert agg.ledger.entries[-1].mechanisms == [{"name": "clip", "max_norm": 1.0}]


def test_cli_mechanism_with_options(tmp_path):
    """``--mechanism NAME:KEY=VALUE,...`` (the CLI could pass no options, and every
    registered mechanism needs some)."""
    from fedsc.cli import build_parser
    from fedsc.run_privacy import parse_mechanism_arg

    args = build_parser().parse_args(
        ["run", "scbatchprox", "--out", str(tmp_path / "o"), "--mechanism",
         "quantize:step=1e-3,stochastic=true", "--mechanism", "clip:max_norm=1"]
    )  # fmt: skip
    entries = [parse_mechanism_arg(m) for m in args.mechanism]
    assert entries == [{"quantize": {"step": 1e-3, "stochastic": True}}, {"clip": {"max_norm": 1}}]
    assert RunConfig("scbatchprox", mechanisms=entries).mechanisms == entries


CLI_CASES = [
    (
        "cli-mechanism-without-options",
        ["--mechanism", "clip"],
        ["needs option(s) ['max_norm']", "--mechanism clip:max_norm="],
    ),
    (
        "cli-mechanism-option-without-value",
        ["--mechanism", "clip:max_norm"],
        ["option 'max_norm' is not KEY=VALUE", "--mechanism clip:max_norm=1.0"],
    ),
    ("cli-mechanism-no-name", ["--mechanism", ":max_norm=1"], ["names no mechanism"]),
    (
        "cli-mechanism-option-twice",
        ["--mechanism", "clip:max_norm=1,max_norm=2"],
        ["sets option 'max_norm' twice"],
    ),
    (
        "cli-param-dp-noise-true",
        ["--param", 'dp={"level": "client", "noise_multiplier": true}'],
        ["dp.noise_multiplier must be a number"],
    ),
    (
        "cli-param-dp-delta-text",
        ["--param", 'dp={"level": "client", "noise_multiplier": 1, "delta": "tiny"}'],
        ["dp.delta must be a number", "'tiny'"],
    ),
]


@pytest.mark.parametrize("case, extra, words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_privacy_setting_exits_2(case, extra, words, tmp_path, capsys, no_data, nothing_left):
    out = tmp_path / "run"
    code, err = run_cli(capsys, "run", "fedscgen", "--out", str(out), *extra)
    assert code == 2, err
    has_words(err, words)
    assert not out.exists()
    record("CLI run", case, "fedsc run fedscgen " + " ".join(extra), code, err.strip())


# --------------------------------------------------------------------------------- attacks
ATTACK_CASES = [
    (
        "attack-for-other-method",
        {"method": "fedscgen", "attacks": ["scbatchprox_rows"]},
        "fedscgen, attacks: [scbatchprox_rows]",
        ["read a scbatchprox run, not fedscgen", "Attacks for fedscgen:", "fedscgen_membership"],
    ),
    (
        "attack-unknown",
        {"method": "scbatchprox", "attacks": ["membership"]},
        "attacks: [membership]",
        ["unknown attack(s) ['membership']", "choose from"],
    ),
    (
        "attack-twice",
        {"method": "scbatchprox", "attacks": ["update_recovery", "update_recovery"]},
        "attacks: [update_recovery, update_recovery]",
        ["more than once"],
    ),
    (
        "attack-not-a-name",
        {"method": "scbatchprox", "attacks": [{"update_recovery": {}}]},
        "attacks: [{update_recovery: {}}]",
        ["attack names are strings", "choose from"],
    ),
    (
        "attacks-not-a-list",
        {"method": "scbatchprox", "attacks": {"update_recovery": True}},
        "attacks: {update_recovery: true}",
        ["attacks must be a list", "attacks: [update_recovery]"],
    ),
    (
        "attack-centralized",
        {"method": "scgen", "attacks": ["update_recovery"]},
        "scgen, attacks: [update_recovery]",
        ["centralized", "drop `attacks`"],
    ),
    (
        "attack-with-scenario",
        {
            "method": "scbatchprox",
            "attacks": ["scbatchprox_rows"],
            "scenario": "continual",
            "stages": [["indrop"], ["celseq"]],
        },
        "attacks with scenario: continual",
        ["cannot run with the dataset-evolution scenario", "drop attacks"],
    ),
    (
        "attacks-with-secure-rows",
        {"method": "scbatchprox", "attacks": ["scbatchprox_rows"], "params": {"secure_rows": True}},
        "scbatchprox secure_rows with attacks",
        ["secure_rows cannot be combined with ['attacks']", "Drop secure_rows", "drop attacks"],
    ),
    (
        "mechanism-with-secure-rows",
        {
            "method": "scbatchprox",
            "mechanisms": [{"clip": {"max_norm": 0.01}}],
            "params": {"secure_rows": True},
        },
        "scbatchprox secure_rows with mechanisms: [clip]",
        ["secure_rows cannot be combined with ['mechanisms']"],
    ),
    (
        "dp-with-secure-rows",
        {"method": "scbatchprox", "dp": DP, "params": {"secure_rows": True}},
        "scbatchprox secure_rows with dp",
        ["secure_rows cannot be combined with ['dp']"],
    ),
    (
        "attack-dropped-by-inclusion",
        {"method": "fedscgen", "attacks": ["fedscgen_membership"], "inclusion": "dropped"},
        "fedscgen_membership with inclusion: dropped",
        ["inclusion 'dropped' changes", "inclusion: all", "update_recovery"],
    ),
    (
        "party-attack-without-parties",
        {"method": "scbatchprox", "attacks": ["party_shares"], "backend": "plaintext"},
        "party_shares on backend: plaintext",
        ["computation parties", "has no parties", "return no rows", "crypten", "drop them"],
    ),
]


@pytest.mark.parametrize(
    "case, settings, given, words", ATTACK_CASES, ids=[c[0] for c in ATTACK_CASES]
)
def test_attack_refused_not_skipped(case, settings, given, words):
    refused(case, given, words, **settings)


def test_attack_name_as_a_string_is_one_attack():
    assert RunConfig("scbatchprox", attacks="update_recovery").attacks == ["update_recovery"]


def test_attacks_need_two_training_clients():
    """One training client failed after training ("torch.cat(): expected a non-empty
    list"); refused right after loading, before any training."""
    cfg = RunConfig("fedscgen", attacks=["update_recovery"], holdout=["b"])
    with pytest.raises(FedscInputError) as info:
        check_holdout_batches(cfg, ["a", "b"])
    has_words(str(info.value), ["need at least two training clients", "['a']", "drop attacks"])
    record(
        "privacy settings (after load)",
        "attack-one-training-client",
        "attacks with holdout leaving one batch",
        "FedscInputError (CLI: 2)",
        str(info.value),
    )
    single = RunConfig("scbatchprox", attacks=["update_recovery"])
    with pytest.raises(FedscInputError, match="need at least two training clients"):
        check_holdout_batches(single, ["only"])
    check_holdout_batches(single, ["a", "b"])  # two clients: fine
