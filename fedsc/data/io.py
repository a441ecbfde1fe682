"""Read AnnData files with errors that say what went wrong and how to fix it."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from fedsc.errors import FedscInputError

__all__ = ["read_h5ad"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def read_h5ad(path: str | Path, **kwargs) -> ad.AnnData:
    """Read an ``.h5ad`` file (thin wrapper over :func:`anndata.read_h5ad`).

    Raises
    ------
    FedscInputError
        When the file is missing, is a directory, or is not an HDF5/h5ad file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FedscInputError(
            f"no such file: {str(p)!r} (resolved: {str(p.resolve())!r}); check the path."
        )
    if p.is_dir():
        raise FedscInputError(f"{str(p)!r} is a directory; pass the path of an .h5ad file.")
    with p.open("rb") as fh:
        head = fh.read(len(_HDF5_MAGIC))
    if head != _HDF5_MAGIC:
        raise FedscInputError(
            f"{str(p)!r} is not an h5ad (HDF5) file; convert it first (e.g. "
            f"anndata.read_csv/read_loom, scanpy.read_10x_mtx, then adata.write_h5ad(path))."
        )
    try:
        return ad.read_h5ad(p, **kwargs)
    except Exception as exc:  # h5py/anndata raise various types for broken files
        raise FedscInputError(
            f"could not read {str(p)!r} as h5ad ({type(exc).__name__}: {exc}); the file may be "
            f"truncated or written by an incompatible tool; re-export it with "
            f"adata.write_h5ad()."
        ) from exc
