"""Plots, as scanpy's ``sc.pl``: the figures of :mod:`fedsc.plots` under one namespace."""

from __future__ import annotations

from fedsc.plots import (
    attack_advantage,
    attack_success,
    delta_heatmap,
    headline_utility,
    privacy_utility_frontier,
    seed_distributions,
    umap_grid,
)

__all__ = [
    "attack_advantage",
    "attack_success",
    "delta_heatmap",
    "headline_utility",
    "privacy_utility_frontier",
    "seed_distributions",
    "umap_grid",
]
