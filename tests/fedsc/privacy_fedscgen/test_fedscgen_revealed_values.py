"""FedscGen's revealed mean latents, decoded, against the dominant client's true profile."""

from __future__ import annotations

import numpy as np
import pytest

from fedsc.privacy.revealed_values import (
    PROFILE_COLUMNS,
    decode_revealed_profiles,
    revealed_profile_attack,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_decoded_profiles(views):
    profiles = decode_revealed_profiles(views)
    assert sorted(profiles) == sorted(views.revealed["shared_types"])
    assert all(p.shape == (views.n_genes,) and np.isfinite(p).all() for p in profiles.values())


def test_revealed_profiles_match_the_dominant_clients_truth(views):
    df = revealed_profile_attack(views)
    assert list(df.columns) == PROFILE_COLUMNS
    per_type = df[df["cell_type"] != "all"]
    assert len(per_type) == 3 * len(views.revealed["shared_types"])
    o = df[df["cell_type"] == "all"].set_index("metric")
    assert o.loc["pearson", "value"] > o.loc["pearson", "chance"] + 0.1
    assert o.loc["pearson_centered", "value"] > 0.3 > 0.0 > o.loc["pearson_centered", "chance"]
    assert o.loc["count_abs_error", "value"] == 0.0  # the dominant count is revealed exactly
    # each type's decoded profile fits its own truth better than the other types' profiles
    centered = per_type[per_type["metric"] == "pearson_centered"]
    assert (centered["value"] > centered["chance"]).all()
