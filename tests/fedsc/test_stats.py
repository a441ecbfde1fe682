"""fedsc.stats against hand-computed values and planted differences."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from fedsc.errors import FedscInputError
from fedsc.results import TIDY_COLUMNS
from fedsc.stats import (
    COMPARE_COLUMNS,
    SignificanceUnreachableWarning,
    bh_adjust,
    cliffs_delta,
    compare,
    mann_whitney,
    mann_whitney_method,
    min_attainable_p,
    min_seeds_for_alpha,
)

# exact on every CPU: rerun by make test-dispatch (docs/reproducibility.md)
pytestmark = pytest.mark.reproducibility

SEEDS = [42, 123, 456, 789, 101112, 2024, 31415, 2718, 1618, 9999]


def tidy(
    values: dict[tuple[str, str, str], np.ndarray], *, seeds=SEEDS, method: str = "scbatchprox"
) -> pd.DataFrame:
    """Tidy rows from {(dataset, variant, metric): per-seed values}."""
    rows = []
    for (dataset, variant, metric), vals in values.items():
        for seed, v in zip(seeds, vals, strict=True):
            rows.append(
                dict(
                    run_id=f"{dataset}-{variant}-{seed}",
                    study="s",
                    dataset=dataset,
                    method=method,
                    variant=variant,
                    backend="crypten" if variant == "crypten" else "plaintext",
                    private=variant == "crypten",
                    seed=seed,
                    embedding="X_scbatchprox",
                    panel="fedscgen",
                    metric=metric,
                    value=float(v),
                    wall_time_s=1.0,
                    ledger_bytes=1000,
                )
            )
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


# ---------------------------------------------------------------- Mann–Whitney


def test_mann_whitney_exact_hand_case():
    U, p = mann_whitney([1, 2, 3], [4, 5, 6])
    assert U == 0.0
    assert p == pytest.approx(0.1)  # 2 / C(6, 3): only 1 of 20 orderings is as extreme
    assert mann_whitney_method([1, 2, 3], [4, 5, 6]) == "exact"
    U, p = mann_whitney([4, 5, 6], [1, 2, 3])
    assert (U, p) == (9.0, pytest.approx(0.1))


def test_mann_whitney_exact_at_n10_reaches_min_p():
    # scipy's "auto" would go asymptotic at n > 8 (p ≈ 1.8e-4); we use exact without ties
    U, p = mann_whitney(np.arange(10), np.arange(10) + 100)
    assert U == 0.0
    assert p == pytest.approx(2 / math.comb(20, 10))


def test_mann_whitney_ties_asymptotic_hand_case():
    a, b = [1, 2, 2], [2, 3, 4]
    assert mann_whitney_method(a, b) == "asymptotic"
    U, p = mann_whitney(a, b)
    assert U == 1.0  # 1 < all; each 2 ties one 2 (½) and loses to 3, 4
    # normal approximation with tie correction (one tie group of 3) and continuity 0.5
    n1 = n2 = 3
    N = n1 + n2
    var = n1 * n2 / 12 * ((N + 1) - (3**3 - 3) / (N * (N - 1)))
    z = (abs(U - n1 * n2 / 2) - 0.5) / math.sqrt(var)
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-10)


def test_mann_whitney_constant_samples_give_p_one():
    assert mann_whitney_method([1.0, 1.0], [1.0, 1.0, 1.0]) == "constant"
    assert mann_whitney([1.0, 1.0], [1.0, 1.0, 1.0]) == (3.0, 1.0)


def test_mann_whitney_rejects_nan_and_empty():
    with pytest.raises(FedscInputError, match="NaN"):
        mann_whitney([1.0, np.nan], [2.0, 3.0])
    with pytest.raises(FedscInputError, match="empty"):
        mann_whitney([], [2.0, 3.0])


def test_min_attainable_p_reference_values():
    assert min_attainable_p(3, 3) == pytest.approx(0.1)
    assert min_attainable_p(5, 5) == pytest.approx(0.0079, abs=5e-5)
    assert min_attainable_p(10, 10) == pytest.approx(1.1e-5, rel=0.02)
    assert min_attainable_p(1, 1) == 1.0  # 2 / 2
    assert min_attainable_p(0, 4) == 1.0  # capped
    assert min_seeds_for_alpha(0.05) == 4  # 2 / C(8, 4) = 0.029
    with pytest.raises(FedscInputError):
        min_attainable_p(-1, 3)


def test_cliffs_delta_hand_case():
    # pairs a > b: (3,2),(3,2) = 2; a < b: 1<2,1<2,1<5, 2<5, 3<5 = 5; of 9
    assert cliffs_delta([1, 2, 3], [2, 2, 5]) == pytest.approx(-3 / 9)
    assert cliffs_delta([4, 5], [1, 2]) == 1.0
    assert cliffs_delta([1, 1], [1, 1]) == 0.0
    # δ = 2U / (n_a n_b) − 1
    U, _ = mann_whitney([1, 2, 3], [2, 2, 5])
    assert cliffs_delta([1, 2, 3], [2, 2, 5]) == pytest.approx(2 * U / 9 - 1)


# ---------------------------------------------------------------- BH


def test_bh_adjust_hand_vector_with_nan():
    # sorted 0.005, 0.01, 0.03, 0.04 -> ×4/rank: 0.02, 0.02, 0.04, 0.04 (already monotone)
    q = bh_adjust([0.01, np.nan, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(q, [0.02, np.nan, 0.04, 0.04, 0.02])
    # step-up monotonicity: 0.05·2 = 0.1 < 0.5
    np.testing.assert_allclose(bh_adjust([0.05, 0.5]), [0.1, 0.5])
    # raw 0.01·3 = 0.03 > 0.02·3/2 = 0.03; 0.021·3/3 = 0.021 caps both
    np.testing.assert_allclose(bh_adjust([0.01, 0.02, 0.021]), [0.021, 0.021, 0.021])
    assert np.isnan(bh_adjust([np.nan])).all()
    with pytest.raises(FedscInputError, match=r"\[0, 1\]"):
        bh_adjust([0.2, 1.5])


# ---------------------------------------------------------------- compare


METRICS = ["ari", "nmi", "asw_b", "ebm"]
DATASETS = ["pancreas", "pbmc"]


def synthetic(shift: float, *, identical: bool = False, rng_seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    values = {}
    for d in DATASETS:
        for m in METRICS:
            base = rng.normal(0.6, 0.05, size=10)
            other = base if identical else rng.normal(0.6, 0.05, size=10)
            planted = shift if (d, m) == ("pbmc", "ari") else 0.0
            values[(d, "crypten", m)] = other + planted
            values[(d, "plaintext", m)] = base
    return tidy(values)


def test_compare_finds_exactly_the_planted_difference():
    res = compare(synthetic(0.5), {"variant": "crypten"}, {"variant": "plaintext"})
    assert list(res.columns) == ["dataset", "method", "metric", *COMPARE_COLUMNS]
    assert len(res) == len(DATASETS) * len(METRICS)
    sig = res[res["significant"]]
    assert list(zip(sig["dataset"], sig["metric"], strict=True)) == [("pbmc", "ari")]
    row = sig.iloc[0]
    assert row["n_a"] == row["n_b"] == 10
    assert row["U"] == 100.0 and row["cliffs_delta"] == 1.0
    assert row["p"] == pytest.approx(2 / math.comb(20, 10))
    assert row["q"] == pytest.approx(row["p"] * len(res))  # smallest p, rank 1 of 8
    assert row["delta_mean"] == pytest.approx(row["mean_a"] - row["mean_b"])
    assert 0.4 < row["delta_mean"] < 0.6
    assert not res["unreachable"].any()
    assert (res["test"] == "exact").all()
    np.testing.assert_allclose(res["q"], bh_adjust(res["p"]))


def test_compare_keeps_attack_and_audit_rows_apart_per_observer():
    # one audit metric per observer per seed (what a DP run writes): compared per observer
    values = {("pbmc", v, "attack:dp_audit:audited_epsilon"): np.arange(10.0) for v in ("a", "b")}
    rows = tidy(values)
    rows = pd.concat([rows.assign(observer="output"), rows.assign(observer="coordinator")])
    rows.loc[(rows["observer"] == "coordinator") & (rows["variant"] == "a"), "value"] += 100.0
    # and the utility rows beside them, which name no observer (None in one table, NaN
    # in another): still compared, as one group
    utility = tidy({("pbmc", v, "ari"): np.full(10, 0.5) for v in ("a", "b")})
    rows = pd.concat([rows, utility.assign(observer=None)], ignore_index=True)
    rows.loc[len(rows) - 1, "observer"] = np.nan
    res = compare(rows, {"variant": "a"}, {"variant": "b"})
    assert list(res.columns[:4]) == ["dataset", "method", "metric", "observer"]
    labels = res["metric"] + "@" + res["observer"].fillna("-")
    deltas = dict(zip(labels, res["delta_mean"], strict=True))
    assert deltas == {
        "attack:dp_audit:audited_epsilon@coordinator": 100.0,
        "attack:dp_audit:audited_epsilon@output": 0.0,
        "ari@-": 0.0,
    }
    assert res.loc[res["metric"] == "ari", "n_a"].item() == 10


def test_compare_identical_variants_find_nothing():
    res = compare(synthetic(0.0, identical=True), {"variant": "crypten"}, {"variant": "plaintext"})
    assert not res["significant"].any()
    assert (res["p"] == 1.0).all() and (res["delta_mean"] == 0.0).all()
    assert (res["cliffs_delta"] == 0.0).all()
    res = compare(synthetic(0.0, rng_seed=3), {"variant": "crypten"}, {"variant": "plaintext"})
    assert not res["significant"].any()


def test_compare_family_per_dataset():
    res = compare(
        synthetic(0.5), {"variant": "crypten"}, {"variant": "plaintext"}, family=["dataset"]
    )
    for _, g in res.groupby("dataset"):
        np.testing.assert_allclose(g["q"], bh_adjust(g["p"]))
    with pytest.raises(FedscInputError, match="family"):
        compare(synthetic(0.5), {"variant": "crypten"}, {"variant": "plaintext"}, family="seed")


def test_compare_selector_keys_leave_by_and_backend_selector():
    # selecting on a `by` column (metric) drops it from the groups
    res = compare(
        synthetic(0.5),
        {"variant": "crypten", "metric": "ari"},
        {"variant": "plaintext", "metric": "ari"},
    )
    assert "metric" not in res.columns and len(res) == 2
    res = compare(synthetic(0.5), {"backend": "crypten"}, {"backend": "plaintext"})
    assert res["significant"].sum() == 1


def test_compare_three_seeds_warns_unreachable():
    values = {("d", v, "ari"): np.array([0.1, 0.2, 0.3]) + (1.0 if v == "a" else 0.0) for v in "ab"}
    df = tidy(values, seeds=[1, 2, 3])
    with pytest.warns(SignificanceUnreachableWarning, match=r"at least 4 seeds"):
        res = compare(df, {"variant": "a"}, {"variant": "b"})
    assert res["unreachable"].all()
    assert res["p"].iloc[0] == pytest.approx(0.1) and not res["significant"].any()
    assert res["min_attainable_p"].iloc[0] == pytest.approx(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SignificanceUnreachableWarning)
        compare(synthetic(0.5), {"variant": "crypten"}, {"variant": "plaintext"})


def test_compare_duplicate_group_seed_is_an_error_naming_it():
    df = synthetic(0.5)
    dup = df[(df["variant"] == "crypten") & (df["metric"] == "nmi")].copy()
    dup["embedding"] = "X_pca"
    df = pd.concat([df, dup], ignore_index=True)
    with pytest.raises(FedscInputError, match=r"metric=nmi, seed=42.*`by`"):
        compare(df, {"variant": "crypten"}, {"variant": "plaintext"})
    # the fix the message suggests works: both sides need the column, so select embedding
    res = compare(
        df,
        {"variant": "crypten", "embedding": "X_scbatchprox"},
        {"variant": "plaintext"},
    )
    assert len(res) == 8


def test_compare_bad_inputs():
    df = synthetic(0.5)
    with pytest.raises(FedscInputError, match="no rows"):
        compare(df, {"variant": "nope"}, {"variant": "plaintext"})
    with pytest.raises(FedscInputError, match="both match"):
        compare(df, {"dataset": "pbmc"}, {"metric": "ari"})
    with pytest.raises(FedscInputError, match=r"flavour.*lacks"):
        compare(df, {"flavour": "x"}, {"variant": "plaintext"})
    df.loc[0, "value"] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        res = compare(df, {"variant": "crypten"}, {"variant": "plaintext"})
    assert sorted(res["n_a"].unique()) == [9, 10]
