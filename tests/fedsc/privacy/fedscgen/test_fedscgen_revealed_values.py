"""FedscGen's revealed mean latents, decoded, against the dominant client's true profile."""

from __future__ import annotations

import pytest

from fedsc.privacy import COLUMNS, run_attacks
from fedsc.privacy.fedscgen_runs import revealed_from_view

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_revealed_profiles_match_the_dominant_clients_truth(views):
    view = views.view("coordinator")
    df = run_attacks(view, views.truth, ["fedscgen_revealed_values"])
    assert list(df.columns) == COLUMNS
    revealed = revealed_from_view(view, views.fedscgen)
    assert len(df) == 3 * len(revealed["shared_types"])  # 3 metrics per shared type
    owners = df[df["metric"] == "pearson"]["target_client"].tolist()
    assert owners == [revealed["dominant"][t] for t in revealed["shared_types"]]
    o = df.groupby("metric")[["value", "chance"]].mean()  # over the shared types
    assert o.loc["pearson", "value"] > o.loc["pearson", "chance"] + 0.1
    assert o.loc["pearson_centered", "value"] > 0.3 > 0.0 > o.loc["pearson_centered", "chance"]
    assert (df[df["metric"] == "count_abs_error"]["value"] == 0).all()  # revealed exactly
    # each type's decoded profile fits its own truth better than the other types' profiles
    centered = df[df["metric"] == "pearson_centered"]
    assert (centered["value"] > centered["chance"]).all()
