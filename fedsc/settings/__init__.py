"""Process-wide settings: threads, compile caches, warning filters, verbosity, progress.

Nothing here changes global state when imported: ``import fedsc`` (or any submodule)
leaves numba, JAX, torch, ``warnings`` and ``logging`` as they were. The command line,
the runner and sweep workers call :func:`apply`; library users opt in the same way::

    import fedsc
    fedsc.settings.threads = 2          # default: the CPUs available to this process
    fedsc.settings.apply()              # idempotent; call again after changing a setting

Settings (each with an environment variable read when this module is imported):

``threads`` (``FEDSC_THREADS``; ``None``/``"auto"``: ``OMP_NUM_THREADS`` if the user set
    it, else :func:`available_cpus`)
    Threads for torch (intra-op), BLAS and OpenMP; capped at :func:`available_cpus`.

An environment variable holding an unusable value (``FEDSC_THREADS=abc``) does not break
``import fedsc``: the setting keeps its default and :func:`apply` refuses it by name.
``passive_wait`` (``FEDSC_PASSIVE_WAIT``, default on)
    Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``). On a
    machine shared with other jobs, spinning threads occupy the cores the working threads
    wait for: FedscGen ran 14x slower beside one other job with torch's defaults.
``compile_cache`` / ``cache_dir`` (``FEDSC_COMPILE_CACHE``, ``FEDSC_CACHE_DIR``)
    numba and JAX persistent compilation caches (see :mod:`fedsc.evaluation.caches`).
``filter_warnings`` (``FEDSC_FILTER_WARNINGS``, default on)
    Silence known third-party noise (numba's "Cannot cache compiled function").
``verbosity`` (``FEDSC_VERBOSITY``: 0 warnings, 1 info, 2 debug)
    Level used by :func:`configure_logging` (the CLI's ``-v``/``-vv``).
``progress_interval`` (``FEDSC_PROGRESS_INTERVAL``, seconds, default 30)
    How often :func:`fedsc.progress.progress` writes a log line when no bar is shown.
``max_model_params`` / ``max_study_runs`` (``FEDSC_MAX_MODEL_PARAMS``, ``FEDSC_MAX_STUDY_RUNS``)
    Resource budgets checked before any work (:mod:`fedsc.resources`); 0: no limit.
``upstream_cache`` (``FEDSC_UPSTREAM_CACHE``, a folder; default: none, and a sweep's own)
    Where fitted upstream embeddings are kept for runs that fit the same one again
    (:mod:`fedsc.upstream.cache`); :func:`fedsc.sweep.run_sweep` uses
    ``<out>/upstream_cache`` unless this names a folder.
``device`` (``FEDSC_DEVICE``: ``"auto"``, the default, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``)
    Where the VAE methods (FedscGen, scGen) train and correct: ``auto`` is CUDA when torch
    sees a CUDA device, else the CPU (:func:`resolved_device`). Random draws (minibatch
    order, dropout masks, reparameterisation noise) stay on the CPU generators, so a seed
    draws the same numbers on either device; the arithmetic differs in the last bits.
``reproducible`` (``FEDSC_REPRODUCIBLE``: ``"fast"``, the default, or ``"portable"``)
    ``fast`` uses this CPU's fastest kernels: the same seed gives the same bits on this
    machine with the same threads. ``portable`` pins torch (ATen, MKL, oneDNN), numpy
    (SIMD loops, OpenBLAS), numba and XLA to x86-64-v3 kernels and one thread, so the same
    seed gives the same bits on every AVX2 machine (docs/reproducibility.md). The libraries
    read their variables when they load: export ``FEDSC_REPRODUCIBLE=portable`` (or pass
    ``fedsc --reproducible portable``, which restarts itself) rather than setting it in a
    process that has imported numpy or torch; :func:`apply` refuses a process whose loaded
    libraries cannot honour it.

The OpenMP runtime (libgomp, loaded with torch) reads ``OMP_WAIT_POLICY`` once, when it is
loaded: :func:`apply` (and :func:`configure_environment`) can only set it for a torch not
imported yet, and for child processes. Call ``fedsc.settings.apply()`` before
``import torch`` (or export ``OMP_WAIT_POLICY=PASSIVE``) to get passive waiting; thread
counts are applied whenever :func:`apply` runs.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsc.settings import _caches, _numerics
from smpc.cpus import available_cpus

logger = logging.getLogger(__name__)

__all__ = [
    "apply",
    "apply_threads",
    "available_cpus",
    "check_environment",
    "configure_environment",
    "configure_logging",
    "init_worker",
    "logging_to_stderr",
    "numerical_environment",
    "resolved_device",
    "resolved_threads",
    "snapshot",
    "update",
    "worker_snapshot",
]

#: Third-party warnings silenced when ``filter_warnings`` is on: (message regex, category).
WARNING_FILTERS: tuple[tuple[str, type[Warning]], ...] = (
    # numba cannot cache pynndescent's nn_descent (dynamic globals); it compiles in memory.
    ("Cannot cache compiled function", Warning),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off.")


def _check_threads(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        n = int(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"threads must be a positive integer or 'auto', got {value!r}.")
    return n


def _check_limit(value: Any) -> int:
    """A resource limit (:mod:`fedsc.resources`): an integer >= 0 (0: no limit)."""
    try:
        n = int(value.strip().replace("_", "") if isinstance(value, str) else value)
    except (TypeError, ValueError):
        n = -1
    if isinstance(value, bool) or n < 0 or (isinstance(value, float) and value != n):
        raise ValueError(f"a limit must be an integer >= 0 (0: no limit), got {value!r}.")
    return n


def _check_verbosity(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"verbosity must be 0, 1 or 2, got {value!r}.") from None
    return min(max(n, 0), 2)


def _check_interval(value: Any) -> float:
    x = float(value)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"progress_interval must be a finite number >= 0, got {value!r}.")
    return x


def _check_device(value: Any) -> str:
    text = "auto" if value is None else str(value).strip().lower()
    kind, _, index = text.partition(":")
    if text in ("", "auto"):
        return "auto"
    if kind in ("cpu", "cuda") and (not index or (kind == "cuda" and index.isdigit())):
        return text
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}.")


def _check_dir(value: Any) -> Path | None:
    return None if value in (None, "") else Path(value).expanduser()


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "threads": _check_threads,
    "verbosity": _check_verbosity,
    "progress_interval": _check_interval,
    "cache_dir": _check_dir,
    "compile_cache": bool,
    "passive_wait": bool,
    "filter_warnings": bool,
    "reproducible": _numerics.check_mode,
    "max_model_params": _check_limit,
    "max_study_runs": _check_limit,
    "device": _check_device,
    "upstream_cache": _check_dir,
}

if TYPE_CHECKING:  # the settings are module attributes served by _SettingsModule
    threads: int | None
    verbosity: int
    progress_interval: float
    cache_dir: Path | None
    compile_cache: bool
    passive_wait: bool
    filter_warnings: bool
    reproducible: str
    max_model_params: int
    max_study_runs: int
    device: str
    upstream_cache: Path | None


#: Default limit on one model's parameters (:mod:`fedsc.resources` explains the estimate).
MAX_MODEL_PARAMS = 200_000_000
#: Default limit on the runs of one study.
MAX_STUDY_RUNS = 2000

#: setting -> (environment variable, default, example of a valid value)
_ENV: dict[str, tuple[str, Any, str]] = {
    "threads": ("FEDSC_THREADS", None, "4 or auto"),
    "verbosity": ("FEDSC_VERBOSITY", 0, "0, 1 or 2"),
    "progress_interval": ("FEDSC_PROGRESS_INTERVAL", 30, "30"),
    "cache_dir": ("FEDSC_CACHE_DIR", None, "~/.cache/fedsc"),
    "compile_cache": ("FEDSC_COMPILE_CACHE", True, "1 or 0"),
    "passive_wait": ("FEDSC_PASSIVE_WAIT", True, "1 or 0"),
    "filter_warnings": ("FEDSC_FILTER_WARNINGS", True, "1 or 0"),
    "reproducible": ("FEDSC_REPRODUCIBLE", None, "fast or portable"),
    "max_model_params": ("FEDSC_MAX_MODEL_PARAMS", MAX_MODEL_PARAMS, "200000000 (0: no limit)"),
    "max_study_runs": ("FEDSC_MAX_STUDY_RUNS", MAX_STUDY_RUNS, "2000 (0: no limit)"),
    "device": ("FEDSC_DEVICE", "auto", "auto, cpu or cuda"),
    "upstream_cache": ("FEDSC_UPSTREAM_CACHE", None, "~/.cache/fedsc/upstream"),
}

#: Environment variables that held a value fedsc cannot use: variable -> message. They
#: fall back to the default when this module loads (importing fedsc never fails on
#: them); :func:`apply` (the CLI, the runner, sweep workers) refuses them by name.
_env_errors: dict[str, str] = {}


def _from_env(errors: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings from the environment; a bad variable raises, or into ``errors``.

    With ``errors`` given, a variable that cannot be used keeps the setting's default
    and its message goes there (the module does this when it loads); without, the
    first one raises :class:`~fedsc.errors.FedscInputError` naming it.
    """
    from fedsc.errors import FedscInputError

    out: dict[str, Any] = {}
    for name, (var, default, example) in _ENV.items():
        raw = os.environ.get(var)
        try:
            if isinstance(default, bool):
                out[name] = _env_bool(var, default)
            elif raw is None or (raw.strip() == "" and name != "threads"):
                out[name] = _CHECKS[name](default)
            else:
                out[name] = _CHECKS[name](raw or None)
        except ValueError as exc:
            reason = str(exc).removeprefix(f"{var}={raw!r}: ")
            message = (
                f"environment variable {var}={raw!r} is not valid ({reason.rstrip('.')}); "
                f"set it to e.g. {example}, or unset it (unset {var})."
            )
            if errors is None:
                raise FedscInputError(message) from None
            errors[var] = message
            out[name] = _CHECKS[name](default)
    return out


_values: dict[str, Any] = _from_env(_env_errors)
_applied: dict[str, Any] | None = None  # snapshot of the last apply()


class _SettingsModule(types.ModuleType):
    """Validates ``fedsc.settings.<name> = value`` for the known settings."""

    def __getattr__(self, name: str) -> Any:
        if name in _CHECKS:
            return _values[name]
        raise AttributeError(f"module 'fedsc.settings' has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CHECKS:
            _values[name] = _CHECKS[name](value)
        else:
            super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_CHECKS})


sys.modules[__name__].__class__ = _SettingsModule


def update(**values: Any) -> None:
    """Set several settings at once (validated); ``None`` values are ignored."""
    unknown = sorted(set(values) - set(_CHECKS))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(_CHECKS)}.")
    for name, value in values.items():
        if value is not None:
            _values[name] = _CHECKS[name](value)


def snapshot() -> dict[str, Any]:
    """The current settings as a plain, picklable dict (e.g. for worker processes)."""
    out = dict(_values)
    for name in ("cache_dir", "upstream_cache"):
        out[name] = None if out[name] is None else str(out[name])
    return out


# ------------------------------------------------------------------------------ threads
def _omp_threads_at_start() -> int | None:
    try:
        return _check_threads(os.environ.get("OMP_NUM_THREADS"))
    except ValueError:
        return None


#: ``OMP_NUM_THREADS`` as the user set it before fedsc loaded (apply() overwrites it).
_USER_OMP_THREADS = _omp_threads_at_start()


def resolved_threads() -> int:
    """The thread count in effect.

    1 in the ``portable`` mode; else ``threads`` if set, else a user's ``OMP_NUM_THREADS``
    (as set before fedsc was imported), else :func:`available_cpus`; never more than
    :func:`available_cpus` (more threads than CPUs only contend: ``--threads 100000``
    made torch and LLVM's OpenMP allocate per-thread pools until they aborted).
    """
    if _values["reproducible"] == "portable":
        return 1
    cpus = available_cpus()
    return min(_values["threads"] or _USER_OMP_THREADS or cpus, cpus)


def resolved_device() -> str:
    """The torch device the VAE methods use: ``device``, with ``auto`` resolved.

    ``auto``: ``"cuda"`` when ``torch.cuda.is_available()``, else ``"cpu"``. An explicit
    ``cuda`` on a machine where torch sees no CUDA device is refused (it would fail later,
    inside training, with a less helpful message).
    """
    wanted = _values["device"]
    if wanted == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if wanted == "auto":
        return "cuda" if available else "cpu"
    if not available:
        from fedsc.errors import FedscInputError

        raise FedscInputError(
            f"device={wanted!r} but torch sees no CUDA device (torch.cuda.is_available() is "
            f"False; torch {torch.__version__}); set device='auto' or 'cpu' "
            "(FEDSC_DEVICE=auto), or install a CUDA build of torch on a GPU machine."
        )
    count = torch.cuda.device_count()
    index = int(wanted.partition(":")[2] or 0)
    if index >= count:
        from fedsc.errors import FedscInputError

        raise FedscInputError(
            f"device={wanted!r} but torch sees {count} CUDA device(s) (0..{count - 1}); "
            "choose one of them or set device='cuda'."
        )
    return wanted


def _note_capped_threads() -> None:
    """Warn (once per value) when a requested thread count is above the CPUs available."""
    asked = _values["threads"] or _USER_OMP_THREADS
    cpus = available_cpus()
    if asked and asked > cpus and _values["reproducible"] != "portable":
        key = f"capped:{asked}"
        if key not in _noted:
            _noted.add(key)
            source = "threads" if _values["threads"] else "OMP_NUM_THREADS"
            logger.warning(
                "%s=%d is more than the %d CPU(s) available to this process; using %d.",
                source,
                asked,
                cpus,
                cpus,
            )


def check_environment() -> None:
    """Refuse environment variables holding values fedsc cannot use, naming each one.

    Raises :class:`~fedsc.errors.FedscInputError` (exit code 2 in the CLI).
    """
    if _env_errors:
        from fedsc.errors import FedscInputError

        raise FedscInputError(" ".join(_env_errors.values()))


def configure_environment(
    threads: int | None = None, environ: dict[str, str] | os._Environ[str] | None = None
) -> dict[str, str]:
    """Set the environment variables that libraries read when they load.

    ``OMP_WAIT_POLICY=PASSIVE`` and ``GOMP_SPINCOUNT=0`` (when ``passive_wait``; values
    already in the environment are kept) and ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
    ``OPENBLAS_NUM_THREADS`` (overwritten when ``threads`` is given or set, else only
    filled in). Affects libraries loaded afterwards and child processes only.

    Parameters
    ----------
    threads
        Thread count; default :func:`resolved_threads`.
    environ
        Mapping to update (default ``os.environ``).

    Returns
    -------
    The variables that were set.
    """
    env = os.environ if environ is None else environ
    explicit = threads is not None or _values["threads"] is not None
    n = str(threads or resolved_threads())
    changed: dict[str, str] = {}

    def put(name: str, value: str, overwrite: bool) -> None:
        if (overwrite or name not in env) and env.get(name) != value:
            env[name] = value
            changed[name] = value

    if _values["passive_wait"]:
        put("OMP_WAIT_POLICY", "PASSIVE", False)
        put("GOMP_SPINCOUNT", "0", False)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        put(name, n, explicit or _values["reproducible"] == "portable")
    # numba's OpenMP layer sets the OpenMP thread count it shares with torch to its own
    # pool size when it first runs a parallel loop (scanpy's normalize_total does). numba
    # sizes its pool when it is imported and, once the pool runs, raises at the next
    # compilation if the variable changed: it is set only for a numba not loaded yet
    # (apply_threads() covers torch after numba ran).
    if not (env is os.environ and "numba" in sys.modules):
        put("NUMBA_NUM_THREADS", n, explicit or _values["reproducible"] == "portable")
    if _values["reproducible"] == "portable":
        for name, value in _numerics.portable_environment(env).items():
            put(name, value, True)
        put("FEDSC_REPRODUCIBLE", "portable", True)
    if changed:
        logger.debug("environment: %s", changed)
    return changed


def apply_threads() -> int:
    """Set torch's and BLAS's thread counts to :func:`resolved_threads` again; return it.

    For the start of training: a library that shares torch's OpenMP runtime may have
    changed its count since :func:`apply` (numba's OpenMP layer sets it to its own pool
    size, the CPU count unless ``NUMBA_NUM_THREADS`` was set before numba loaded, the first
    time it runs a parallel loop, e.g. in scanpy's ``normalize_total``).
    """
    n = resolved_threads()
    _apply_threads(n)
    return n


def _apply_threads(n: int) -> None:
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.get_num_threads() != n:
            logger.debug("torch threads %d -> %d", torch.get_num_threads(), n)
            torch.set_num_threads(n)
        if (
            _values["passive_wait"]
            and not _wait_policy_was_set_before_torch
            and "spin" not in _noted
        ):
            _noted.add("spin")  # once per process
            logger.info(
                "torch was imported before fedsc.settings.apply(): its OpenMP threads keep "
                "spin-waiting; call apply() before importing torch, or export "
                "OMP_WAIT_POLICY=PASSIVE, to let idle threads sleep."
            )
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        return
    threadpool_limits(limits=n, user_api="blas")


_wait_policy_was_set_before_torch = "OMP_WAIT_POLICY" in os.environ or "torch" not in sys.modules
_noted: set[str] = set()  # notes already logged


# ------------------------------------------------------------------------------- apply
def apply(**overrides: Any) -> dict[str, Any]:
    """Apply the settings to this process (idempotent; opt-in for library users).

    - environment for libraries not yet loaded and for child processes
      (:func:`configure_environment`);
    - torch's and BLAS's thread counts, if those libraries are loaded;
    - the numba/JAX compilation caches (:mod:`fedsc.evaluation.caches`): configured now
      for the libraries already loaded, and when the metric panels are imported;
    - warning filters (``filter_warnings``).

    Logging handlers are not touched (see :func:`configure_logging`).

    Parameters
    ----------
    **overrides
        Settings to change first, as for :func:`update`.

    Returns
    -------
    The settings applied (:func:`snapshot` plus ``resolved_threads``).
    """
    global _applied, _wait_policy_was_set_before_torch
    check_environment()
    update(**overrides)
    _note_capped_threads()
    if "torch" not in sys.modules:
        _wait_policy_was_set_before_torch = True
    n = resolved_threads()
    state = {**snapshot(), "resolved_threads": n}
    configure_environment(n)
    if _values["reproducible"] == "portable":
        _check_portable()
    _apply_threads(n)
    if _values["filter_warnings"]:
        for message, category in WARNING_FILTERS:
            warnings.filterwarnings("ignore", message=message, category=category)
    _caches.request(_values["cache_dir"] if _values["compile_cache"] else False)
    if state == _applied:
        return state
    _applied = state
    logger.info(
        "settings applied: %d threads (%d CPUs available), passive wait %s, compile cache %s",
        n,
        available_cpus(),
        "on" if _values["passive_wait"] else "off",
        _caches.cache_root(_values["cache_dir"]) if _values["compile_cache"] else "off",
    )
    return state


def _check_portable() -> None:
    """Refuse ``portable`` where it cannot hold: another CPU, or libraries loaded unpinned."""
    from fedsc.errors import FedscInputError

    if _values["threads"] not in (None, 1):
        raise FedscInputError(
            f"reproducible='portable' runs on one thread (parallel reductions split their "
            f"sums by thread), but threads={_values['threads']}; unset threads."
        )
    ok, why = _numerics.cpu_supports_portable()
    if not ok:
        raise FedscInputError(f"reproducible='portable' cannot hold here: {why}. Use 'fast'.")
    bad = _numerics.loaded_mismatches()
    if bad:
        raise FedscInputError(
            "reproducible='portable' was set after libraries loaded with this CPU's own "
            f"kernels ({'; '.join(bad)}). Export FEDSC_REPRODUCIBLE=portable before starting "
            "Python (the fedsc command restarts itself with --reproducible portable)."
        )


def numerical_environment() -> dict[str, Any]:
    """What decides the bits of this process's results (for ``run.json``).

    See :func:`fedsc.settings._numerics.numerical_environment`.
    """
    return {
        **_numerics.numerical_environment(_values["reproducible"]),
        "threads": resolved_threads(),
    }


# ----------------------------------------------------------------------------- logging
_HANDLER_NAME = "fedsc-cli"
_LOGGERS = ("fedsc", "smpc")


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which tests and notebooks replace)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(verbosity: int | None = None, stream: Any = None) -> logging.Handler:
    """Log fedsc's (and smpc's) messages to ``stream`` (default stderr); for applications.

    The library itself adds no handlers. This adds one (replacing the one it added before)
    to the ``fedsc`` and ``smpc`` loggers: level WARNING at verbosity 0, INFO at 1, DEBUG
    at 2. Progress lines (``fedsc.progress``, written when no progress bar is shown) are
    shown at every verbosity. :func:`logging_to_stderr` undoes it afterwards.

    Parameters
    ----------
    verbosity
        0, 1 or 2; default the ``verbosity`` setting (which it also sets).
    stream
        Where to write; default the current ``sys.stderr``.
    """
    if verbosity is not None:
        _values["verbosity"] = _check_verbosity(verbosity)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[_values["verbosity"]]
    handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        for old in [h for h in lg.handlers if h.get_name() == _HANDLER_NAME]:
            lg.removeHandler(old)
        lg.addHandler(handler)
        lg.setLevel(level)
    logging.getLogger("fedsc.progress").setLevel(min(level, logging.INFO))
    return handler


@contextmanager
def logging_to_stderr(verbosity: int | None = None) -> Iterator[logging.Handler]:
    """:func:`configure_logging` for a block; the loggers' state and the setting are restored."""
    names = (*_LOGGERS, "fedsc.progress")
    before = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    verbosity_before = _values["verbosity"]
    try:
        yield configure_logging(verbosity)
    finally:
        _values["verbosity"] = verbosity_before
        for n, (level, handlers) in before.items():
            lg = logging.getLogger(n)
            lg.setLevel(level)
            lg.handlers[:] = handlers


# ----------------------------------------------------------------------------- workers
def worker_snapshot() -> dict[str, Any]:
    """Settings to hand to a worker process (:func:`init_worker`), incl. CLI logging."""
    handlers = logging.getLogger("fedsc").handlers
    return {**snapshot(), "log": any(h.get_name() == _HANDLER_NAME for h in handlers)}


def init_worker(parent: dict[str, Any], threads: int | None = None) -> None:
    """In a fresh worker process: take the parent's settings, ``threads``, and apply them.

    Called before the worker imports torch, so passive OpenMP waiting takes effect.
    """
    values = {k: v for k, v in parent.items() if k in _CHECKS}
    if threads is not None:
        values["threads"] = threads
    update(**values)
    if parent.get("log"):
        configure_logging()
    apply()
