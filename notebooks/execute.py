"""Execute the walkthrough notebooks and store them with their outputs.

Usage (from the repository root)::

    .venv/bin/python notebooks/execute.py                 # every notebooks/*.ipynb
    .venv/bin/python notebooks/execute.py notebooks/01_quickstart.ipynb

Each notebook runs in a fresh kernel started with *this* interpreter
(``sys.executable -m ipykernel_launcher``, through a kernelspec written to a temporary
folder, so no kernel has to be installed), in a temporary working directory, and is
written back in place with its outputs. Per-cell timing metadata is not recorded, so
re-executing only changes what the code prints. ``tests/test_notebooks.py`` runs the same
way but never writes the stored notebooks.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

KERNEL_NAME = "fedsc-venv"
HERE = Path(__file__).resolve().parent


def kernel_manager(spec_dir: Path) -> KernelManager:
    """A kernel manager whose kernel is ``sys.executable -m ipykernel_launcher``."""
    kdir = spec_dir / KERNEL_NAME
    kdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"fedsc ({sys.executable})",
        "language": "python",
    }
    (kdir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(spec_dir)], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def execute(
    path: Path, *, timeout: int = 600, workdir: Path | None = None
) -> nbformat.NotebookNode:
    """Execute one notebook (a copy in memory) and return the executed notebook."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="fedsc-nb-") as tmp:
        tmp = Path(tmp)
        cwd = workdir or (tmp / "work")
        cwd.mkdir(parents=True, exist_ok=True)
        km = kernel_manager(tmp / "kernels")
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            record_timing=False,
            resources={"metadata": {"path": str(cwd)}},
        )
        try:
            client.execute()
        finally:  # nbclient leaves a kernel it did not create running
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    return nb


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        nb = execute(path)
        # Store a clean kernelspec: the temporary one names this machine's interpreter.
        nb.metadata["kernelspec"] = {
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "name": "python3",
        }
        nbformat.write(nb, path)
        size = path.stat().st_size / 1024
        print(f"{path}: {time.perf_counter() - start:.1f} s, {size:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
