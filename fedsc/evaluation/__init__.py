"""Metric panels on an embedding: scIB (scib-metrics), FedscGen, downstream classifier.

Each panel returns tidy rows ``panel, metric, value``. :data:`PANELS` names them and
:func:`evaluate` runs the named panels on an AnnData representation, adding the
``embedding`` column (see ``fedsc.results``); :func:`register_panel` adds one.
"""

from __future__ import annotations

from typing import Any

from fedsc._compat import warn_if_broken
from fedsc.data.access import representation
from fedsc.evaluation.caches import enable_compilation_caches
from fedsc.evaluation.fedscgen_panel import fedscgen_panel
from fedsc.evaluation.panels import PANELS, check_panels, evaluate, register_panel
from fedsc.evaluation.scib_panel import scib_panel

warn_if_broken()  # known-broken dependency pairs (fedsc._compat): say so at import

__all__ = [
    "PANELS",
    "check_panels",
    "downstream_accuracy",
    "enable_compilation_caches",
    "evaluate",
    "fedscgen_panel",
    "register_panel",
    "representation",
    "scib_panel",
]


def __getattr__(name: str) -> Any:
    # the downstream panel trains torch MLPs: importing torch when a panel name is checked
    # (RunConfig validation) cost start-up time, so it loads when first used
    if name == "downstream_accuracy":
        from fedsc.evaluation.downstream import downstream_accuracy

        return downstream_accuracy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
