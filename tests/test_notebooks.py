"""The walkthrough notebooks execute without errors (nbclient, a fresh kernel each).

Each notebook is read into memory and executed in a temporary working directory; the
stored notebooks are never written. The kernel is this interpreter
(``sys.executable -m ipykernel_launcher``) through a kernelspec written to ``tmp_path``,
so the test needs no installed kernel and always uses the project's virtual environment.
Notebooks 02 and 04 run
with fewer seeds (:data:`TEST_PARAMETERS`). Together about 1.5-2 minutes on two cores (most of it starting each kernel and importing
the stack, and starting CrypTen's parties). The notebooks load scib-metrics' compiled
kernels from the compilation caches (notebook 01 calls ``fedsc.settings.apply()``; the
sweep notebooks' runs call it) instead of compiling them in every kernel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _helpers.paths import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("jupyter_client.kernelspec")
manager = pytest.importorskip("jupyter_client.manager")

NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "fedsc-test-venv"
#: Seconds one cell may run; the whole notebook is bounded by the pytest timeout below.
CELL_TIMEOUT = 240
NOTEBOOK_TIMEOUT = 300
MAX_BYTES = 1_000_000
#: Smaller runs for the test (papermill's convention: a cell injected after the
#: ``# Parameters`` cell overrides them): fewer seeds, every cell still executes. The
#: stored notebooks keep their own parameters (``notebooks/execute.py`` injects nothing).
TEST_PARAMETERS = {
    "02_privacy_ablation": "SEEDS = [42]",
    "04_privacy_utility": "SEEDS = [42]",
}


def kernel_manager(spec_dir: Path):
    """A kernel manager that starts ``sys.executable -m ipykernel_launcher``."""
    kdir = spec_dir / KERNEL_NAME
    kdir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fedsc test kernel",
        "language": "python",
    }
    (kdir / "kernel.json").write_text(json.dumps(spec))
    ksm = kernelspec.KernelSpecManager(kernel_dirs=[str(spec_dir)], ensure_native_kernel=False)
    return manager.KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def inject_parameters(nb, source: str) -> None:
    """Insert ``source`` as a code cell right after the notebook's ``# Parameters`` cell."""
    at = next(
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and c.source.lstrip().startswith("# Parameters")
    )
    cell = nbformat.v4.new_code_cell(f"# Injected parameters (tests/test_notebooks.py)\n{source}")
    nb.cells.insert(at + 1, cell)


def error_outputs(nb) -> list[str]:
    """``ename: evalue`` of every error output in an executed notebook."""
    return [
        f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


def test_the_three_walkthroughs_exist():
    names = [p.name for p in NOTEBOOKS]
    assert names[:3] == [
        "01_quickstart.ipynb",
        "02_privacy_ablation.ipynb",
        "03_seed_sweep_statistics.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_notebook_is_executed_and_small(path):
    """Stored with outputs (an executed walkthrough), without errors, under 1 MB."""
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    not_run = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and not c.execution_count]
    assert not not_run, f"{path.name}: code cells {not_run} were not executed before storing"
    assert any(c.outputs for c in code), f"{path.name} is stored without outputs"
    assert not error_outputs(nb), error_outputs(nb)
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 3


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    before = path.read_bytes()
    nb = nbformat.read(path, as_version=4)
    if path.stem in TEST_PARAMETERS:
        inject_parameters(nb, TEST_PARAMETERS[path.stem])
    workdir = tmp_path / "work"
    workdir.mkdir()
    km = kernel_manager(tmp_path / "kernels")
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT,
        record_timing=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()  # raises CellExecutionError (with the traceback) on an error
    finally:  # nbclient does not shut down a kernel manager it was given
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    nbformat.write(nb, tmp_path / path.name)  # the executed copy, for inspection
    assert not error_outputs(nb), error_outputs(nb)
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    assert path.read_bytes() == before, "the stored notebook must not be rewritten"
