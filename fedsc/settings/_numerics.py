"""Numerical reproducibility: the ``portable`` mode and a record of the numerical environment.

Floating-point results of the same code on the same data differ between processors because
each numerical library picks its kernels for the CPU it runs on (vector width, FMA, summation
order), and between thread counts because parallel reductions split the work by thread.
``fast`` (the default) lets every library use the best kernels of this CPU and the threads
asked for; ``portable`` pins each library to one dispatch level that every x86-64-v3 CPU
(AVX2 + FMA: Intel since Haswell, AMD since Zen) runs the same way, and to one thread, so
that the same seed gives the same bits on any such machine (docs/reproducibility.md).

No library offers this as one switch: each of torch (ATen, MKL, oneDNN), numpy (its SIMD
loops, OpenBLAS), numba and XLA has its own variable, read once when it loads. This module
owns that list, checks that the libraries already loaded honour it, and describes the
environment for ``run.json``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

MODES = ("fast", "portable")

#: The variables ``portable`` sets (before the libraries load), and what each pins.
PORTABLE_ENV: dict[str, str] = {
    # torch's vectorised ATen kernels: the AVX2 build of each (also on AVX-512 CPUs)
    "ATEN_CPU_CAPABILITY": "avx2",
    # torch's BLAS (MKL): Intel's conditional numerical reproducibility, the branch that
    # gives the same bits on every x86-64 CPU, Intel or AMD
    "MKL_CBWR": "COMPATIBLE",
    # torch's oneDNN primitives
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # numpy's and scipy's OpenBLAS kernels (PCA, kNN distances, linear algebra)
    "OPENBLAS_CORETYPE": "Haswell",
    # numba's machine code (pynndescent, umap: the metrics' kNN graphs)
    "NUMBA_CPU_NAME": "haswell",
}
#: numpy's SIMD loops above x86-64-v3 (numpy 2.x; names its build lacks are ignored)
_NUMPY_ABOVE_V3 = ("X86_V4", "AVX512_SKX", "AVX512_CLX", "AVX512_CNL", "AVX512_ICL", "AVX512_SPR")
#: JAX/XLA (scib-metrics) code generation
_XLA_FLAG = "--xla_cpu_max_isa=AVX2"

#: Variables recorded in run.json: those that change which kernels run, or how many threads.
RECORDED_ENV = (
    *PORTABLE_ENV,
    "NPY_DISABLE_CPU_FEATURES",
    "XLA_FLAGS",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
    "DNNL_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "FEDSC_THREADS",
    "FEDSC_REPRODUCIBLE",
)

#: CPU flags that decide which kernels the libraries choose.
_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")

_MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 10: "AVX2", 12: "AVX512"}


def check_mode(value: Any) -> str:
    """``"fast"`` or ``"portable"`` (case-insensitive); anything else is an error."""
    mode = "fast" if value is None else str(value).strip().lower()
    if mode not in MODES:
        raise ValueError(
            f"reproducible={value!r}: expected 'fast' (this CPU's fastest kernels) or "
            "'portable' (the same bits on every x86-64-v3 CPU; docs/reproducibility.md)."
        )
    return mode


def portable_environment(environ: Any = None) -> dict[str, str]:
    """The variables ``portable`` needs, merged with what ``environ`` already holds."""
    env = os.environ if environ is None else environ
    out = {**PORTABLE_ENV, "NPY_DISABLE_CPU_FEATURES": " ".join(_NUMPY_ABOVE_V3)}
    flags = env.get("XLA_FLAGS", "")
    out["XLA_FLAGS"] = flags if "--xla_cpu_max_isa" in flags else f"{flags} {_XLA_FLAG}".strip()
    return out


def cpu_supports_portable() -> tuple[bool, str]:
    """Whether this CPU can run the pinned x86-64-v3 kernels (and why not)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False, f"the portable mode pins x86-64 kernels; this is {platform.machine()}"
    flags = set(cpu_info().get("flags", []))
    if flags and not {"avx2", "fma"} <= flags:
        return False, "this CPU lacks AVX2/FMA (x86-64-v3), the level the portable mode pins"
    return True, ""


def loaded_mismatches() -> list[str]:
    """Libraries already loaded in this process that do not use the portable kernels.

    Each library reads its variable once, when it loads (torch: at its first operation),
    so a process that imported it before the mode was set cannot be made portable.
    """
    bad = []
    torch = sys.modules.get("torch")
    if torch is not None:
        cap = torch.backends.cpu.get_cpu_capability()
        if cap != "AVX2":
            bad.append(f"torch's kernels are {cap}, not AVX2")
        branch = mkl_branch()
        if branch not in (None, "COMPATIBLE"):
            bad.append(f"MKL's reproducibility branch is {branch}, not COMPATIBLE")
    if "numpy" in sys.modules:
        arch = {str(i.get("architecture")) for i in _openblas_info()}
        if arch - {"Haswell"}:
            bad.append(f"OpenBLAS uses {sorted(arch)} kernels, not Haswell")
        try:
            on = _numpy_simd_above_v3()
            if on:
                bad.append(f"numpy's SIMD loops use {on}")
        except ImportError:  # pragma: no cover
            pass
    numba_config = sys.modules.get("numba.core.config")
    if numba_config is not None and getattr(numba_config, "CPU_NAME", None) != "haswell":
        bad.append("numba compiles for this CPU, not haswell")
    return bad


def _numpy_simd_above_v3() -> list[str]:
    """numpy's SIMD loops in use above x86-64-v3 (dispatched, supported, not disabled)."""
    from numpy._core._multiarray_umath import (  # type: ignore[import-not-found]
        __cpu_dispatch__,
        __cpu_features__,
    )

    return [f for f in __cpu_dispatch__ if f in _NUMPY_ABOVE_V3 and __cpu_features__.get(f)]


def mkl_branch() -> str | None:
    """MKL's conditional-numerical-reproducibility branch in torch, or None without MKL."""
    lib = _torch_cpu_library()
    if lib is None:
        return None
    try:
        code = int(lib.mkl_serv_cbwr_get(1))  # MKL_CBWR_BRANCH
    except (AttributeError, OSError):  # pragma: no cover - another torch build
        return None
    return _MKL_BRANCHES.get(code, str(code))


@cache
def _torch_cpu_library() -> Any:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    path = Path(str(torch.__file__)).parent / "lib" / "libtorch_cpu.so"
    try:
        return ctypes.CDLL(str(path)) if path.exists() else None
    except OSError:  # pragma: no cover
        return None


def _openblas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - comes with scikit-learn
        return []
    return [i for i in threadpool_info() if i.get("internal_api") == "openblas"]


@cache
def cpu_info() -> dict[str, Any]:
    """CPU model and the flags that decide kernel choice (from /proc/cpuinfo on Linux)."""
    info: dict[str, Any] = {"machine": platform.machine(), "model": platform.processor() or None}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not info.get("model_name"):
            info["model_name"] = value.strip()
        elif key == "vendor_id" and "vendor" not in info:
            info["vendor"] = value.strip()
        elif key == "flags" and "flags" not in info:
            present = set(value.split())
            info["flags"] = [f for f in _CPU_FLAGS if f in present]
    info["model"] = info.pop("model_name", info["model"])
    return info


def numerical_environment(mode: str = "fast") -> dict[str, Any]:
    """What decides the bits of a run's floating-point results, for ``run.json``.

    CPU model and flags, each loaded library's kernel choice (torch's CPU capability, MKL's
    branch, OpenBLAS's architecture, numba's target), thread counts, the variables that
    steer them, and library versions.
    """
    out: dict[str, Any] = {"reproducible": mode, "cpu": cpu_info()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = {
            "version": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "blas": "mkl" if torch.backends.mkl.is_available() else "other",
            "mkl_cbwr_branch": mkl_branch(),
            "onednn": bool(torch.backends.mkldnn.is_available()),
        }
    out["openblas"] = [
        {k: i.get(k) for k in ("filepath", "version", "architecture", "num_threads")}
        for i in _openblas_info()
    ]
    for entry in out["openblas"]:
        entry["filepath"] = Path(entry["filepath"]).name
    numba_config = sys.modules.get("numba.core.config")
    if numba_config is not None:
        out["numba_cpu_name"] = getattr(numba_config, "CPU_NAME", None) or "host"
    if "numpy" in sys.modules:
        try:
            from numpy._core._multiarray_umath import (
                __cpu_baseline__,
                __cpu_dispatch__,
            )

            out["numpy_simd"] = {
                "baseline": list(__cpu_baseline__),
                "dispatch": list(__cpu_dispatch__),
                "above_x86_64_v3": _numpy_simd_above_v3(),
            }
        except ImportError:  # pragma: no cover
            pass
    out["environment"] = {k: os.environ[k] for k in RECORDED_ENV if k in os.environ}
    out["versions"] = library_versions(NUMERICAL_PACKAGES)
    return out


#: The numerical libraries whose versions decide the bits.
NUMERICAL_PACKAGES = ("numpy", "scipy", "torch", "scikit-learn", "numba", "jax", "jaxlib")


def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Python's version and each installed distribution's (``"not installed"`` if absent)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
