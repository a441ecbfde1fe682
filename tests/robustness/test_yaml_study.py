"""Study YAML: one schema checked at load; every message names the file and the key.

Every case fails before the first run starts (and before the sweep folder is touched).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from _helpers.digests import folder_hash
from _helpers.study import write_study

from fedsc.cli import main
from fedsc.errors import FedscInputError
from fedsc.sweep import Study

GOOD = """\
study: tiny
datasets: [pancreas]
seeds: [0, 1]
methods:
  scbatchprox:
    settings: {use_rep: X_pca, panels: [], params: {rounds: 1}}
    variants:
      a: {params: {mu: 0.0}}
      b: {params: {mu: 1.0}}
"""


def load_error(tmp_path: Path, text: str) -> str:
    path = write_study(tmp_path, text)
    with pytest.raises(FedscInputError) as info:
        Study.from_yaml(path).expand()
    message = str(info.value)
    assert message.startswith(str(path)), message  # every message names the file
    return message


# (case id, YAML text, words the message must contain)
BAD = [
    ("empty-file", "", ["the study is empty"]),
    ("comments-only", "# nothing yet\n", ["the study is empty"]),
    ("top-level-list", "- study: x\n- seeds: [1]\n", ["top level must be a mapping", "list"]),
    ("top-level-string", "just text\n", ["top level must be a mapping", "string"]),
    (
        "syntax-error",
        "study: x\nseeds: [1, 2\nmethods: {}\n",
        ["YAML syntax error at line", "column"],
    ),
    ("tab-indent", "study: x\n\tseeds: [1]\n", ["YAML syntax error at line 2"]),
    ("unknown-top-key", GOOD + "seed: [3]\n", ["unknown study key", "'seed'"]),
    ("missing-keys", "study: x\ndatasets: [pancreas]\n", ["lacks", "seeds", "methods"]),
    ("seeds-empty", GOOD.replace("seeds: [0, 1]", "seeds: []"), ["seeds: is empty"]),
    (
        "seeds-string",
        GOOD.replace("seeds: [0, 1]", 'seeds: "42"'),
        ["seeds: must be a list", "'42'", "not split into digits"],
    ),
    ("seeds-int", GOOD.replace("seeds: [0, 1]", "seeds: 42"), ["seeds: must be a list", "[42]"]),
    (
        "seeds-mapping",
        GOOD.replace("seeds: [0, 1]", "seeds: {a: 1}"),
        ["seeds: must be a list", "mapping"],
    ),
    ("seeds-bool", GOOD.replace("seeds: [0, 1]", "seeds: [1, true]"), ["seeds[1]", "True"]),
    (
        "seeds-float",
        GOOD.replace("seeds: [0, 1]", "seeds: [1.5, 2]"),
        ["seeds[0]", "1.5", "integer"],
    ),
    (
        "seeds-integral-float",
        GOOD.replace("seeds: [0, 1]", "seeds: [42.0]"),
        ["seeds[0]", "write 42"],
    ),
    ("seeds-negative", GOOD.replace("seeds: [0, 1]", "seeds: [-1]"), ["seeds[0]", "0..4294967295"]),
    (
        "seeds-quoted",
        GOOD.replace("seeds: [0, 1]", 'seeds: ["7"]'),
        ["seeds[0]", "without quotes"],
    ),
    (
        "seeds-duplicated",
        GOOD.replace("seeds: [0, 1]", "seeds: [3, 3]"),
        ["seeds: lists [3] more than once"],
    ),
    (
        "datasets-string",
        GOOD.replace("datasets: [pancreas]", "datasets: pancreas"),
        ["datasets: must be a list", "[pancreas]"],
    ),
    (
        "datasets-duplicated",
        GOOD.replace("datasets: [pancreas]", "datasets: [pancreas, pancreas]"),
        ["datasets: lists ['pancreas'] more than once"],
    ),
    (
        "method-duplicated",
        GOOD + "  scbatchprox:\n    settings: {}\n",
        ["key 'scbatchprox' appears twice", "line 10", "first on line 5"],
    ),
    (
        "method-unknown",
        GOOD.replace("  scbatchprox:", "  scvi:"),
        ["methods.scvi", "unknown method", "scbatchprox"],
    ),
    ("methods-list", GOOD.split("methods:")[0] + "methods: [scbatchprox]\n", ["methods: must be"]),
    (
        "method-unknown-key",
        GOOD.replace("    variants:", "    variant:"),
        ["methods.scbatchprox", "unknown key(s) ['variant']"],
    ),
    (
        "variant-unknown-setting",
        GOOD.replace("b: {params: {mu: 1.0}}", "b: {n_comp: 3}"),
        ["methods.scbatchprox.variants.b", "unknown run setting", "n_comp"],
    ),
    (
        "variant-sets-seed",
        GOOD.replace("b: {params: {mu: 1.0}}", "b: {seed: 3}"),
        ["methods.scbatchprox.variants.b", "['seed'] cannot be set here"],
    ),
    (
        "variant-not-a-mapping",
        GOOD.replace("b: {params: {mu: 1.0}}", "b: [mu, 1]"),
        ["methods.scbatchprox.variants.b", "must be a mapping"],
    ),
    (
        "variant-bad-param",
        GOOD.replace("b: {params: {mu: 1.0}}", "b: {params: {mu: abc}}"),
        ["variants.b", "params.mu", "number", "'abc'"],
    ),
    (
        "variant-backend-option-on-plaintext",
        GOOD.replace("b: {params: {mu: 1.0}}", "b: {backend_options: {parties: 3}}"),
        ["variants.b", "plaintext backend takes no options"],
    ),
    (
        "grid-scalar",
        GOOD + "    grid: {params.rounds: 3}\n",
        ["methods.scbatchprox.grid.params.rounds", "non-empty list"],
    ),
    (
        "holdout-string-on-unsupported",
        GOOD.replace("b: {params: {mu: 1.0}}", "b: {holdout: indrop}"),
        ["variants.b", "does not support held-out"],
    ),
]


@pytest.mark.parametrize("case, text, words", BAD, ids=[c[0] for c in BAD])
def test_bad_study(case, text, words, tmp_path):
    message = load_error(tmp_path, text)
    for word in words:
        assert word in message, (word, message)


def test_good_study_and_1e_minus_3_is_a_float(tmp_path):
    text = GOOD.replace("mu: 1.0", "mu: 1e-3") + "    grid: {params.rounds: [1, 2e0]}\n"
    runs = Study.from_yaml(write_study(tmp_path, text)).expand()
    assert len(runs) == 2 * 2 * 2
    mus = {r.params["mu"] for r in runs}
    assert mus == {0.0, 0.001} and all(isinstance(m, float) for m in mus)
    assert {r.params["rounds"] for r in runs} == {1, 2}


def test_many_seeds_warn(tmp_path, caplog):
    seeds = ", ".join(str(i) for i in range(1001))
    text = GOOD.replace("seeds: [0, 1]", f"seeds: [{seeds}]")
    with caplog.at_level(logging.WARNING, logger="fedsc.sweep.study"):
        Study.from_yaml(write_study(tmp_path, text))
    assert "1001 seeds per variant" in caplog.text


def test_study_file_missing_or_folder(tmp_path):
    with pytest.raises(FedscInputError, match="not found"):
        Study.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(FedscInputError, match="is a folder"):
        Study.from_yaml(tmp_path)


@pytest.mark.parametrize(
    "text, words",
    [
        ("", ["study.yaml", "empty"]),
        ("study: x\nseeds: [1, 2\n", ["study.yaml", "YAML syntax error at line"]),
        (GOOD.replace("seeds: [0, 1]", 'seeds: "42"'), ["study.yaml", "seeds"]),
    ],
    ids=["empty", "syntax", "seeds-string"],
)
def test_cli_sweep_bad_study_exit_2_and_earlier_sweep_untouched(tmp_path, capsys, text, words):
    out = tmp_path / "sweep"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "abc.json").write_text('{"run_id": "abc"}')
    (out / "results.csv").write_text("x\n")
    before = folder_hash(out)
    code = main(["sweep", str(write_study(tmp_path, text)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for word in words:
        assert word in err
    assert folder_hash(out) == before


def test_cli_sweep_bad_study_creates_no_folder(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", str(write_study(tmp_path, "- a\n")), "--out", str(out)])
    assert code == 2 and "top level must be a mapping" in capsys.readouterr().err
    assert not out.exists()


def test_cli_sweep_workers_zero(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(
            [
                "sweep",
                str(write_study(tmp_path, GOOD)),
                "--out",
                str(tmp_path / "o"),
                "--workers",
                "0",
            ]
        )
    assert info.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_holdout_string_in_a_study_is_one_batch(tmp_path):
    text = (
        "study: s\ndatasets: [pancreas]\nseeds: [0]\n"
        "methods: {fedscgen: {settings: {holdout: indrop, panels: []}}}\n"
    )
    (run,) = Study.from_yaml(write_study(tmp_path, text)).expand()
    assert run.holdout == ["indrop"]


def test_use_rep_list_in_a_study(tmp_path):
    message = load_error(tmp_path, GOOD.replace("use_rep: X_pca", "use_rep: [X_pca]"))
    assert "use_rep must be an obsm key" in message and "variants.a" in message
