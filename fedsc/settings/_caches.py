"""Persistent compilation caches for the metric panels (numba and JAX).

scib-metrics runs its kernels through JAX (silhouette, LISI, kBET, k-means, PCR) and its
neighbour helpers through numba (pynndescent, UMAP connectivities). Both compile on first
use, which costs a fresh process tens of seconds. With the caches below on disk, a second
process loads the compiled code instead of compiling it again.

Where: ``$FEDSC_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/fedsc``, else ``~/.cache/fedsc``;
numba code goes to ``<root>/numba`` (unless ``NUMBA_CACHE_DIR`` is already set) and JAX
executables to ``<root>/jax``.

The caches are opt-in: :func:`fedsc.settings.apply` requests them (:func:`request`), which
configures numba/JAX at once when they are loaded, else when the metric panels are
imported (:func:`enable_if_requested`). Importing fedsc alone changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import pkgutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_ENABLED: Path | None = None  # root configured by enable_compilation_caches
_REQUESTED: Path | None = None  # root requested by fedsc.settings.apply()

_NUMBA_PACKAGES = ("umap.umap_", "pynndescent")


def cache_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Directory that holds fedsc's compilation caches (``root`` if given)."""
    if root is not None:
        return Path(root).expanduser()
    if env := os.environ.get("FEDSC_CACHE_DIR"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fedsc"


def request(root: str | os.PathLike[str] | bool | None = None) -> Path | None:
    """Ask for the caches (``False``: do not); configure them now if numba/JAX are loaded.

    Returns the requested root, or None.
    """
    global _REQUESTED
    if root is False:
        _REQUESTED = None
        return None
    _REQUESTED = cache_root(None if root is True else root)
    if any(m in sys.modules for m in ("jax", "numba", "umap", "pynndescent")):
        enable_compilation_caches(_REQUESTED)
    return _REQUESTED


def enable_if_requested() -> Path | None:
    """Configure the caches if :func:`request` asked for them (the panels call this)."""
    return None if _REQUESTED is None else enable_compilation_caches(_REQUESTED)


def enable_compilation_caches(root: str | os.PathLike[str] | None = None) -> Path:
    """Turn on the numba and JAX persistent compilation caches (idempotent).

    Call before numba or JAX compile anything. ``NUMBA_CACHE_DIR`` only reaches
    functions declared ``cache=True`` and is read when numba is first imported, so it is
    set (if unset) and numba's config reloaded when numba is already loaded. JAX's
    thresholds are lowered to zero so that every kernel, including the many small ones
    scib-metrics compiles, is written to the cache. Imports numba, umap, pynndescent and
    JAX.

    Parameters
    ----------
    root
        Cache directory; default :func:`cache_root`.

    Returns
    -------
    The cache root in use. Unwritable locations disable caching for that tool with a
    warning (both libraries fall back to compiling in memory).
    """
    global _ENABLED
    path = cache_root(root)
    if _ENABLED == path:
        return path
    numba_dir = path / "numba"
    jax_dir = path / "jax"
    for d in (numba_dir, jax_dir):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # metrics still work, each process just compiles again
            warnings.warn(
                f"cannot create the compilation cache {d} ({err}); set FEDSC_CACHE_DIR to a "
                "writable folder to keep compiled metric code between processes.",
                stacklevel=2,
            )

    if "NUMBA_CACHE_DIR" not in os.environ:
        os.environ["NUMBA_CACHE_DIR"] = str(numba_dir)
        if "numba" in sys.modules:  # numba read its config already: make it re-read.
            from numba.core import config as numba_config

            numba_config.reload_config()

    _enable_numba_caching(_NUMBA_PACKAGES)

    import jax

    jax.config.update("jax_compilation_cache_dir", str(jax_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _ENABLED = path
    return path


@contextlib.contextmanager
def _jit_caches_by_default() -> Iterator[None]:
    """While a package is first imported, ``numba.njit``/``numba.jit`` default to ``cache=True``.

    pynndescent compiles ~60 distance kernels at import (``@numba.njit`` with explicit
    signatures compiles at decoration, before :func:`_enable_numba_caching` could switch
    caching on) and declares none ``cache=True``: every process that imported it spent
    ~10-12 CPU-seconds (importing umap imports it). Declared ``cache=True`` at
    decoration, they are written to ``NUMBA_CACHE_DIR`` once and loaded afterwards
    (~1.5 s). numba has no setting for this default, hence the temporary wrapper; modules
    already imported are not affected.
    """
    import numba

    njit, jit = numba.njit, numba.jit

    def cached(decorator: Any) -> Any:
        @functools.wraps(decorator)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("cache", True)
            return decorator(*args, **kwargs)

        return wrapper

    numba.njit, numba.jit = cached(njit), cached(jit)
    try:
        yield
    finally:
        numba.njit, numba.jit = njit, jit


def _enable_numba_caching(packages: tuple[str, ...]) -> int:
    """Switch on on-disk caching for the numba functions of third-party modules.

    umap's ``fuzzy_simplicial_set`` kernels (scib-metrics' connectivities) and most of
    pynndescent are ``@njit`` without ``cache=True``, so every process recompiled them
    (~5 s for the connectivities alone). ``Dispatcher.enable_caching`` is what
    ``cache=True`` does at decoration; functions numba cannot cache (pynndescent's
    ``nn_descent``, which uses dynamic globals) just keep compiling in memory, and the
    warning numba gives about that is silenced. Returns the number of functions switched.
    """
    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # pragma: no cover - numba comes with scib-metrics
        return 0
    warnings.filterwarnings("ignore", message="Cannot cache compiled function")
    n = 0
    for name in packages:
        mods = []
        with _jit_caches_by_default():
            try:
                pkg = importlib.import_module(name)
            except ImportError:  # pragma: no cover
                continue
            mods.append(pkg)
            if hasattr(pkg, "__path__"):
                for info in pkgutil.iter_modules(pkg.__path__):
                    try:
                        mods.append(importlib.import_module(f"{name}.{info.name}"))
                    except ImportError:  # pragma: no cover
                        continue
        for mod in mods:
            for obj in list(vars(mod).values()):
                if (
                    isinstance(obj, Dispatcher)
                    and type(getattr(obj, "_cache", None)).__name__ == "NullCache"
                ):
                    obj.enable_caching()
                    n += 1
    return n
