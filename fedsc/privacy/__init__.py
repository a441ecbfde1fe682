"""Privacy measurement: what each observer of a run receives, and attacks on it.

Record a run through a :class:`~fedsc.privacy.views.RecordingMechanism`, split it into
observer views (:func:`~fedsc.privacy.views.observer_view`), and run attacks by name
(:func:`~fedsc.privacy.attacks.run_attacks`) from the one registry
(:data:`~fedsc.privacy.attacks.ATTACKS`: each :class:`~fedsc.privacy.attacks.Attack`
declares the observers it reads, the truth it needs and the capabilities it requires of
the method, ``MethodSpec.reveals``).
Inside runs and sweeps (``attacks:``/``dp:`` in a run config),
:mod:`fedsc.privacy.in_run` records the views, runs the attacks and the DP accounting and
labels the tidy rows. The threat model is in ``docs/privacy.md``.
"""

from fedsc.privacy.attacks import (
    ATTACKS,
    COLUMNS,
    Attack,
    Truth,
    attack_record,
    register_attack,
    run_attacks,
    unregister_attack,
)
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
    "COLUMNS",
    "IN_RUN_ATTACKS",
    "MEASURED_BY",
    "OBSERVERS",
    "Attack",
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
    "register_attack",
    "run_attacks",
    "unregister_attack",
    "update_recovery",
]
