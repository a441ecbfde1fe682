"""Bundled real data, paths to the shared (GPL) data, and simulators.

Bundled (MIT; every dataset and its licence: ``docs/data.md``):

- :func:`pancreas`: panc8_small, 500 cells × 2000 genes, 5 technologies, 6 cell types.
- :func:`cellbench_3cl`: CellBench 3 cell lines, 499 cells × 2000 HVGs, 2 protocols.

Both have ``obs["batch"]`` and ``obs["cell_type"]`` and raw counts in ``X``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import anndata as ad

from fedsc.data.io import read_h5ad
from fedsc.datasets.simulation import simulate, simulate_embedding, simulate_h5ad

__all__ = [
    "cellbench_3cl",
    "pancreas",
    "read",
    "shared_path",
    "simulate",
    "simulate_embedding",
    "simulate_h5ad",
]

PANCREAS_FILE = "pancreas_panc8_small_5tech.h5ad"
CELLBENCH_3CL_FILE = "cellbench_3cl_celseq2_dropseq_hvg2000.h5ad"


def _bundled(name: str) -> ad.AnnData:
    ref = resources.files("fedsc.datasets").joinpath("data", name)
    with resources.as_file(ref) as path:
        return read_h5ad(path)


def pancreas() -> ad.AnnData:
    """Human pancreas (panc8_small, bbknnR, MIT): 500 cells × 2000 genes, raw counts.

    Five technologies (``obs["batch"]``: celseq, celseq2, fluidigmc1, indrop, smartseq2;
    100 cells each), six cell types (``obs["cell_type"]``), Seurat PCA in ``obsm["X_pca"]``.
    Some counts are non-integer as distributed. A fresh AnnData on every call.
    """
    return _bundled(PANCREAS_FILE)


def cellbench_3cl() -> ad.AnnData:
    """CellBench 3 cell lines (sc_mixology, MIT): 499 cells × 2000 HVGs, raw UMI counts.

    Two protocols (``obs["batch"]``: CEL-seq2, Drop-seq), three cell lines
    (``obs["cell_type"]``). A fresh AnnData on every call.
    """
    return _bundled(CELLBENCH_3CL_FILE)


def read(path: str | Path) -> ad.AnnData:
    """Read any ``.h5ad`` file, with clear errors (see :func:`fedsc.data.read_h5ad`)."""
    return read_h5ad(path)


def _shared_candidates() -> list[Path]:
    here = Path(__file__).resolve()
    repo = here.parents[2]  # fedsc/datasets/__init__.py -> repo root
    cands = [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    cands.append(Path.cwd() / "shared" / "data")
    return list(dict.fromkeys(c.resolve() for c in cands))


def shared_path(name: str | None = None) -> Path:
    """Locate ``../shared/data`` (relative to the repository) or a file in it.

    The GPL-licensed data stay outside the package, in ``<repo>/../shared/data``; the
    catalogue of files and licences is ``docs/data.md``.

    Parameters
    ----------
    name
        File name inside the shared data folder (``".h5ad"`` is appended when missing);
        ``None`` returns the folder.

    Raises
    ------
    FileNotFoundError
        Naming every place looked at.
    """
    looked = []
    for folder in _shared_candidates():
        if name is None:
            target = folder
        else:
            fname = name if name.endswith(".h5ad") else f"{name}.h5ad"
            target = folder / fname
        looked.append(str(target))
        if target.exists():
            return target
    raise FileNotFoundError(
        f"shared data {name or 'folder'!r} not found; looked in: {looked}. Put the file in "
        f"<repo>/../shared/data (see docs/data.md) or pass its path to "
        f"fedsc.datasets.read()."
    )
