"""Labels and ``private`` from every attack row (issue 18, point 5).

The old label looked at update-recovery errors only: a plaintext, client-DP FedscGen run
whose property attack named every client's majority cell type (1.0, chance 0.6) was
labelled ``private: True``. These tests fail on that behaviour.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from fedsc.privacy import in_run
from fedsc.privacy.verdict import (
    AT_CHANCE,
    BEATS,
    INCONCLUSIVE,
    advantage,
    judge_rows,
    leak_direction,
    metric_verdict,
    observer_verdict,
)


def _rows(entries):
    return pd.DataFrame(
        [
            {"attack": a, "observer": o, "metric": m, "value": v, "chance": c, "target_client": t}
            for a, o, m, v, c, t in entries
        ]
    )


def test_direction_and_advantage_per_metric_family():
    assert leak_direction("auc_pooled") == 1 and leak_direction("majority_accuracy") == 1
    assert leak_direction("update_relative_error") == -1
    assert leak_direction("revealed_proportion_mae") == -1
    assert leak_direction("update_norm") == 0 and leak_direction("mean_update_cosine") == 0
    assert advantage("auc", 0.75, 0.5) == pytest.approx(0.25)
    assert advantage("update_relative_error", 0.0, 1.0) == pytest.approx(1.0)  # exact
    assert advantage("update_relative_error", 1.0, 1.0) == pytest.approx(0.0)  # a guess
    assert math.isnan(advantage("count_abs_error", 0.0, math.nan))  # no chance level


def test_metric_verdict_uses_the_interval_and_the_tolerance():
    # five clients, all far above chance: beats chance
    assert metric_verdict("m", "coordinator", "auc", [0.9] * 5, [0.5] * 5).verdict == BEATS
    # at chance everywhere: at chance
    v = metric_verdict("m", "coordinator", "auc", [0.49, 0.51, 0.5, 0.5], [0.5] * 4)
    assert v.verdict == AT_CHANCE
    # widely spread around a small gain: neither shown
    v = metric_verdict("m", "coordinator", "auc", [0.3, 0.9, 0.35, 0.85], [0.5] * 4)
    assert v.verdict == INCONCLUSIVE
    # a single value has a point interval
    assert metric_verdict("m", "output", "auc_pooled", [0.6], [0.5]).verdict == BEATS
    assert metric_verdict("m", "output", "update_norm", [3.0], [0.0]) is None


def test_property_attack_beating_chance_is_not_labelled_private():
    raw = _rows(
        [
            ("update_recovery", "coordinator", "update_relative_error", 1.02, 1.0, c)
            for c in range(5)
        ]
        + [("update_recovery", "coordinator", "update_cosine", 0.01, 0.0, c) for c in range(5)]
        + [("fedscgen_property", "coordinator", "weights_majority_accuracy", 1.0, 0.6, -1)]
    )
    verdicts = judge_rows(raw)
    obs = observer_verdict("coordinator", verdicts)
    assert obs is not None and obs.status == "leaks" and obs.private is False
    assert "fedscgen_property:weights_majority_accuracy" in obs.describe()
    privacy = in_run.InRunPrivacy(
        SimpleNamespace(), SimpleNamespace(), SimpleNamespace(federated=True)
    )
    label, private = privacy._label(in_run._summarise(raw), {"coordinator": obs}, ledger=None)
    assert private is False and "coordinator: leaks" in label


def test_private_only_when_every_attack_of_every_observer_is_at_chance():
    at_chance = [
        ("update_recovery", o, "update_relative_error", 1.0, 1.0, c)
        for o in ("coordinator", "client")
        for c in range(6)
    ]
    raw = _rows(at_chance)
    by_obs = {o: observer_verdict(o, judge_rows(raw)) for o in ("coordinator", "client")}
    privacy = in_run.InRunPrivacy(
        SimpleNamespace(), SimpleNamespace(), SimpleNamespace(federated=True)
    )
    label, private = privacy._label(in_run._summarise(raw), by_obs, ledger=None)
    assert private is True and "every attack at chance" in label
    # one inconclusive observer: not called private
    noisy = _rows(
        at_chance[:6]
        + [
            ("fedscgen_membership", "client", "auc", v, 0.5, c)
            for c, v in enumerate([0.3, 0.9, 0.35, 0.85])
        ]
    )
    by_obs = {o: observer_verdict(o, judge_rows(noisy)) for o in ("coordinator", "client")}
    assert by_obs["client"].status == "inconclusive"
    _, private = privacy._label(in_run._summarise(noisy), by_obs, ledger=None)
    assert private is pd.NA
