"""Privacy measurement: what each observer of a run receives, and attacks on it.

Record a run through a :class:`~fedsc.privacy.views.RecordingMechanism`, split it into
observer views (:func:`~fedsc.privacy.views.observer_view`), and run attacks by name
(:func:`~fedsc.privacy.attacks.run_attacks`, :data:`~fedsc.privacy.attacks.ATTACKS`).
Inside runs and sweeps (``attacks:``/``dp:`` in a run config),
:mod:`fedsc.privacy.in_run` records the views, runs the attacks and the DP accounting and
labels the tidy rows. The threat model is in ``docs/privacy.md``.
"""

from fedsc.privacy.attacks import ATTACKS, Truth, attack_record, run_attacks
from fedsc.privacy.in_run import IN_RUN_ATTACKS
from fedsc.privacy.threat_model import MEASURED_BY, exposure
from fedsc.privacy.update_recovery import update_recovery
from fedsc.privacy.views import (
    OBSERVERS,
    ObservedOp,
    ObserverView,
    RecordingMechanism,
    RunRecord,
    all_views,
    observer_view,
    recording_aggregator,
)

__all__ = [
    "ATTACKS",
    "IN_RUN_ATTACKS",
    "MEASURED_BY",
    "OBSERVERS",
    "ObservedOp",
    "ObserverView",
    "RecordingMechanism",
    "RunRecord",
    "Truth",
    "all_views",
    "attack_record",
    "exposure",
    "observer_view",
    "recording_aggregator",
    "run_attacks",
    "update_recovery",
]
