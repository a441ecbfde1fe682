"""The load stage: the one dataset catalogue (names, loading, labels in tables).

A run's dataset (``RunConfig.dataset``, ``fedsc run --input``) is one of:

- a bundled dataset (:data:`BUNDLED`: ``pancreas``, ``cellbench_3cl``);
- ``shared:<file>``, a file in the shared data folder (:func:`fedsc.datasets.shared_path`);
- a path to an ``.h5ad`` file.

Every place that names datasets reads this module (the runner, the CLI's input check,
the tables' dataset column), so a new bundled dataset is one entry in :data:`BUNDLED`.
The loaders are named as ``"module:function"`` and imported on first use, so checking a
name (the CLI, before anything loads) does not import AnnData.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedsc.errors import FedscInputError
from fedsc.registry import Registry, resolve

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["BUNDLED", "DEFAULT", "check_dataset", "dataset_label", "is_catalogued", "load_dataset"]

#: Bundled dataset name -> its loader (both MIT; ``docs/data.md``).
BUNDLED: Registry[str] = Registry("bundled dataset")
BUNDLED.register("pancreas", "fedsc.datasets:pancreas")
BUNDLED.register("cellbench_3cl", "fedsc.datasets:cellbench_3cl")
#: The dataset a run uses when none is named.
DEFAULT = "pancreas"
SHARED_PREFIX = "shared:"


def is_catalogued(name: str) -> bool:
    """A bundled name or ``shared:<file>`` (not a path)."""
    return name in BUNDLED or name.startswith(SHARED_PREFIX)


def load_dataset(name: str) -> ad.AnnData:
    """Bundled name, ``shared:<file>`` or a path to an ``.h5ad`` file."""
    from fedsc import datasets  # AnnData: when a dataset loads (start-up time of the CLI)

    if name in BUNDLED:
        return resolve(BUNDLED.get(name))()
    if name.startswith(SHARED_PREFIX):
        return datasets.read(datasets.shared_path(name.removeprefix(SHARED_PREFIX)))
    return datasets.read(name)


def dataset_label(name: str) -> str:
    """Short dataset name for tables: the bundled name, or the file stem for paths."""
    return name if name in BUNDLED else Path(name.removeprefix(SHARED_PREFIX)).stem


def check_dataset(name: str, flag: str = "--input") -> None:
    """A dataset that is a path: an existing ``.h5ad`` file (checked before anything loads).

    Raises :class:`~fedsc.errors.FedscInputError` naming ``flag`` and the fix.
    """
    if is_catalogued(name):
        return
    path = Path(name)
    if path.is_dir():
        raise FedscInputError(f"{flag} {name} is a folder; pass an .h5ad file.")
    if not path.is_file():
        raise FedscInputError(
            f"{flag} {name} not found; pass an .h5ad file or a bundled dataset "
            f"({', '.join(BUNDLED)})."
        )
    with path.open("rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        raise FedscInputError(
            f"{flag} {name} is not an .h5ad (HDF5) file; convert it with anndata "
            "(adata.write_h5ad) first."
        )
