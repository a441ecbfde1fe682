"""The frontier of experiments/privacy_utility_scale.yaml: who beats the uncorrected input.

Reads a sweep folder (``results/privacy_utility_scale`` by default) and prints, per
dataset and variant, the DP level, ε (the largest over observers, ``dp_epsilon``), the
mean batch and bio scores and how many of each beat the run's own uncorrected input (the
attacks' verdicts per observer are ``fedsc report``'s findings table). Batch metrics: ebm, asw_b, kbet, ilisi (scaled
to [0, 1] as (iLISI - 1) / (batches - 1)), gc; bio metrics: nmi, ari, asw_c, knn_acc, ilf1.

Run: ``.venv/bin/python experiments/privacy_utility_scale_frontier.py [DIR ...]``
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd

BATCH = ("ebm", "asw_b", "kbet", "ilisi", "gc")
BIO = ("nmi", "ari", "asw_c", "knn_acc", "ilf1")


def load(folders: list[Path]) -> pd.DataFrame:
    """Every ok run's tidy rows, with the run's number of batches."""
    frames = []
    for folder in folders:
        for path in sorted((folder / "runs").glob("*.json")):
            rec = json.loads(path.read_text())
            if rec.get("status") != "ok":
                print(f"skipped {path.name}: {rec.get('status')} {rec.get('error')}")
                continue
            rows = pd.DataFrame(rec["rows"])
            rows["dp_level"] = ((rec["info"].get("dp") or {}).get("dp_level")) or "none"
            rows["clients"] = (rec["config"].get("dp") or {}).get("clients", "batch")
            frames.append(rows)
    return pd.concat(frames, ignore_index=True)


def summarise(rows: pd.DataFrame, n_batches: int) -> pd.DataFrame:
    """One line per (dataset, variant): utility against the uncorrected input."""
    util = rows[rows["panel"] != "attack"].copy()
    util = util[util["metric"].isin(BATCH + BIO)]
    scaled = util["metric"] == "ilisi"
    util.loc[scaled, "value"] = (util.loc[scaled, "value"] - 1) / max(n_batches - 1, 1)
    out = []
    for (dataset, variant), g in util.groupby(["dataset", "variant"]):
        base = g[g["method"] == "uncorrected"].set_index("metric")["value"]
        run = g[g["method"] != "uncorrected"].set_index("metric")["value"]
        eps = g[g["method"] != "uncorrected"]["dp_epsilon"].iloc[0]
        out.append(
            {
                "dataset": dataset,
                "variant": variant,
                "level": g["dp_level"].iloc[0]
                + (" (donors as clients)" if g["clients"].iloc[0] == "donor" else ""),
                "epsilon": "inf" if pd.isna(eps) or math.isinf(eps) else f"{eps:.3g}",
                "batch": run.reindex(BATCH).mean(),
                "batch_uncorr": base.reindex(BATCH).mean(),
                "batch_wins": int((run.reindex(BATCH) > base.reindex(BATCH)).sum()),
                "bio": run.reindex(BIO).mean(),
                "bio_uncorr": base.reindex(BIO).mean(),
                "bio_wins": int((run.reindex(BIO) > base.reindex(BIO)).sum()),
            }
        )
    frame = pd.DataFrame(out)
    frame["beats_uncorrected_both"] = (frame["batch"] > frame["batch_uncorr"]) & (
        frame["bio"] > frame["bio_uncorr"]
    )
    return frame


def main() -> None:
    """Print the frontier table of the folders given (default: the study's)."""
    folders = [Path(a) for a in sys.argv[1:]] or [Path("results/privacy_utility_scale")]
    rows = load(folders)
    for dataset, g in rows.groupby("dataset"):
        n_batches = 2 if "kang" in str(dataset) else 5
        table = summarise(g, n_batches)
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
