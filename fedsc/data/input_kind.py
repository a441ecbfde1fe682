"""What kind of matrix a method was given: raw counts, log-normalised expression or an embedding.

Rules (:func:`detect_input_kind`, on the finite stored values; NaN/Inf are
:func:`fedsc.data.validate_adata`'s business):

- ``"counts"``: no negative value and a maximum above :data:`EXPRESSION_MAX`
  (``log1p(1e4)`` ≈ 9.21, the largest value ``log1p`` of CP10k-normalised data can take),
  or every non-zero value an integer. Integrality is *not* required: the bundled pancreas
  is distributed with 54 % of its non-zero counts non-integer (CEL-seq2 / Smart-seq2
  estimated counts), so count-scale data is recognised by its range and the share of
  non-integer values is only reported;
- ``"negative_counts"``: count-scale (maximum above :data:`EXPRESSION_MAX`) with a few
  negative entries (at most :data:`NEGATIVE_COUNTS_SHARE` of the stored values): neither
  counts nor log-normalised expression, refused everywhere;
- ``"expression"``: non-negative, maximum at most :data:`EXPRESSION_MAX`, not all integer;
- ``"log_other_scale"``: non-negative, maximum in (:data:`EXPRESSION_MAX`,
  :data:`LOG_CPM_MAX`] and practically every non-zero value non-integer: log-normalised
  with a target sum above 1e4 (e.g. log1p CPM); refused (re-normalising it as counts
  would take the log twice, using it as is breaks the CP10k scale the methods assume);
- ``"embedding"``: negative values in more than :data:`NEGATIVE_COUNTS_SHARE` of the
  entries (PCs, scaled data, latent spaces);
- ``"empty"``: no finite stored value.

:func:`check_input_kind` compares the detected kind with what a method needs
(``MethodSpec.input``) and raises :class:`~fedsc.errors.FedscInputError` naming what was
found and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsc.errors import FedscInputError

__all__ = [
    "EXPRESSION_MAX",
    "LOG_CPM_MAX",
    "NEGATIVE_COUNTS_SHARE",
    "InputKind",
    "check_input_kind",
    "detect_input_kind",
]

#: Largest value of log1p(normalize_total(target_sum=1e4)) data (one gene with all counts),
#: with a little room for float32 rounding.
EXPRESSION_MAX: float = float(np.log1p(1e4)) + 1e-3
#: Above EXPRESSION_MAX but at most this, every non-zero value non-integer: log-normalised
#: with a larger target sum (log1p of CPM reaches log1p(1e6) = 13.8), not counts.
LOG_CPM_MAX: float = float(np.log1p(1e6)) + 1e-3
#: Count-scale data with at most this share of negative entries is corrupt counts, more is
#: an embedding or scaled data.
NEGATIVE_COUNTS_SHARE: float = 0.01

_PREPROCESS_FIX = (
    "run fedsc.preprocessing.preprocess(adata) (normalize_total to 1e4 + log1p + HVG), or "
    "sc.pp.normalize_total(adata, target_sum=1e4); sc.pp.log1p(adata), first"
)


@dataclass(frozen=True)
class InputKind:
    """The detected kind of a matrix and the statistics it was decided on."""

    kind: str
    min: float
    max: float
    n_values: int
    n_negative: int
    nonint_share: float
    #: (row, column) of the most negative entry, when there is one.
    argmin: tuple[int, int] | None = None

    def describe(self) -> str:
        """One phrase: range, negatives and non-integer share."""
        parts = [f"values in [{self.min:.4g}, {self.max:.4g}]"]
        if self.n_negative:
            share = self.n_negative / max(self.n_values, 1)
            parts.append(
                f"{self.n_negative} negative entr{'y' if self.n_negative == 1 else 'ies'} ({share:.2%})"
            )
        parts.append(f"{self.nonint_share:.0%} of non-zero values non-integer")
        return ", ".join(parts)


def _stored(matrix: Any) -> tuple[np.ndarray, Any]:
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    if sp.issparse(matrix):
        csr = sp.csr_matrix(matrix)
        return np.asarray(csr.data), csr
    arr = np.asarray(matrix)
    return arr.reshape(-1), arr


def detect_input_kind(matrix: Any) -> InputKind:
    """Classify ``matrix`` (dense, sparse or DataFrame) as counts, expression or embedding.

    See the module docstring for the rules.
    """
    values, shaped = _stored(matrix)
    if not np.issubdtype(values.dtype, np.number):
        raise FedscInputError(f"matrix has non-numeric dtype {values.dtype}; convert it to floats.")
    values = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    if values.size == 0:
        return InputKind("empty", float("nan"), float("nan"), 0, 0, 0.0)
    vmin, vmax = float(values.min()), float(values.max())
    nonzero = values[values != 0]
    nonint = float(np.mean(nonzero != np.round(nonzero))) if nonzero.size else 0.0
    n_neg = int(np.count_nonzero(values < 0))
    argmin = None
    if n_neg:
        if sp.issparse(shaped):
            pos = int(np.nanargmin(np.where(np.isfinite(shaped.data), shaped.data, np.inf)))
            row = int(np.searchsorted(shaped.indptr, pos, side="right") - 1)
            argmin = (row, int(shaped.indices[pos]))
        else:
            flat = (
                np.where(np.isfinite(shaped), shaped, np.inf)
                if shaped.dtype.kind == "f"
                else shaped
            )
            r, c = np.unravel_index(int(np.argmin(flat)), shaped.shape)
            argmin = (int(r), int(c) if shaped.ndim > 1 else 0)
    count_scale = vmax > EXPRESSION_MAX
    if n_neg == 0 and count_scale and vmax <= LOG_CPM_MAX and nonint > 0.99:
        kind = "log_other_scale"
    elif n_neg == 0:
        kind = "counts" if count_scale or nonint == 0.0 else "expression"
    elif count_scale and n_neg <= NEGATIVE_COUNTS_SHARE * values.size:
        kind = "negative_counts"
    else:
        kind = "embedding"
    return InputKind(kind, vmin, vmax, int(values.size), n_neg, nonint, argmin)


def _cell_gene(adata: Any, argmin: tuple[int, int] | None) -> str:
    if argmin is None or adata is None:
        return ""
    r, c = argmin
    try:
        return f" (the most negative at cell {adata.obs_names[r]!r}, gene {adata.var_names[c]!r})"
    except IndexError:
        return ""


def check_input_kind(
    matrix: Any,
    expected: str,
    *,
    where: str = "adata.X",
    method: str = "the method",
    adata: Any = None,
) -> InputKind:
    """Refuse ``matrix`` unless it is what ``method`` needs; return the detected kind.

    Parameters
    ----------
    matrix
        The matrix the method will read.
    expected
        ``"expression"`` (log-normalised), ``"counts"`` or ``"embedding"``
        (``MethodSpec.input``), or ``"expression_or_counts"`` (the runner, which
        normalises counts itself). For ``"counts"``, log-normalised expression is accepted
        too (used as given).
    where
        How the matrix is named in messages (``"adata.X"``, ``"adata.layers['x']"``).
    method
        The method's name, for messages.
    adata
        The AnnData, to name the cell and gene of a negative entry.

    Raises
    ------
    FedscInputError
        Naming what was found, what ``method`` needs and how to get it.
    """
    found = detect_input_kind(matrix)
    stats = found.describe()
    if found.kind == "negative_counts":
        raise FedscInputError(
            f"{where} looks like raw counts ({stats}) but has negative entries"
            f"{_cell_gene(adata, found.argmin)}: that is neither counts nor log-normalised "
            f"expression. Counts are non-negative; fix or drop the negative entries "
            f"(e.g. check the file, or clip with X[X < 0] = 0 only if you know they are "
            f"noise) before running {method}."
        )
    if found.kind == "log_other_scale" and expected in ("expression", "expression_or_counts"):
        raise FedscInputError(
            f"{where} looks log-normalised with a target sum above 1e4 ({stats}; log1p of "
            f"CP10k is at most {EXPRESSION_MAX:.2f}, of CPM {LOG_CPM_MAX:.2f}); {method} "
            f"needs log1p(CP10k) expression: start from the raw counts and {_PREPROCESS_FIX}."
        )
    if expected == "expression":
        if found.kind == "counts":
            raise FedscInputError(
                f"{where} looks like raw counts ({stats}; log-normalised values are at most "
                f"log1p(1e4) = {EXPRESSION_MAX:.2f}) but {method} needs log-normalised "
                f"expression: {_PREPROCESS_FIX}."
            )
        if found.kind == "embedding":
            raise FedscInputError(
                f"{where} has negative values ({stats}): it looks like an embedding (e.g. "
                f"PCs) or scaled data, but {method} needs log-normalised expression "
                f"(non-negative, at most {EXPRESSION_MAX:.2f}) over genes: pass the "
                f"log-normalised genes in X (or layer=), not adata.obsm['X_pca'] or "
                f"sc.pp.scale output."
            )
    elif expected == "counts":
        if found.kind == "embedding":
            raise FedscInputError(
                f"{where} has negative values ({stats}): it looks like an embedding or scaled "
                f"data, but {method} needs raw counts (non-negative); pass the counts "
                f"(e.g. layer='counts')."
            )
    elif expected == "expression_or_counts":
        if found.kind == "embedding":
            raise FedscInputError(
                f"{where} has negative values ({stats}): it looks like an embedding or scaled "
                f"data, but {method} needs raw counts (normalised here) or log-normalised "
                f"expression; pass the counts or the log-normalised genes in X."
            )
    elif expected == "embedding":
        pass  # any finite real matrix can be an embedding
    else:
        raise ValueError(f"unknown input kind {expected!r}")
    return found
