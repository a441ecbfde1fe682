"""What the run stages hand each other: the prepared input, the method's outcome, the result.

These types are the run pipeline's seams: the deployment layer builds a
:class:`MethodOutcome` from a Flower run, the privacy layer annotates a :class:`RunResult`'s
rows, and neither imports the runner to do so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anndata as ad
import pandas as pd

if TYPE_CHECKING:
    from fedsc.run.config import RunConfig

__all__ = ["MethodOutcome", "Prepared", "RunResult"]


@dataclass
class RunResult:
    """Outcome of one run."""

    config: RunConfig
    adata: ad.AnnData
    rows: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """A method's input: the cells and what the "before" rows evaluate.

    ``before`` (``obsm`` key or ``"X"``) is the uncorrected representation, named ``base``
    in the ``method`` column (e.g. ``"pca"``, ``"uncorrected"``); ``use_rep`` is the
    embedding an embedding method reads (``None`` for the other input kinds); ``info``
    holds ``run.json`` entries of the preparation and the fit (``upstream``: the upstream
    embedding's record; ``fit_seconds``: the method's own fit, without the preparation).
    """

    adata: ad.AnnData
    before: str
    base: str
    use_rep: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodOutcome:
    """What running a method left to evaluate: its cells and its privacy evidence.

    ``info`` holds extra ``run.json`` entries (a deployment's coordinator record).
    """

    prepared: Prepared
    ledger: dict[str, Any]
    private: bool
    privacy_note: str
    method_seconds: float
    info: dict[str, Any] = field(default_factory=dict)
