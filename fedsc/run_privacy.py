"""A run's privacy settings (``dp``, ``mechanisms``, ``attacks``): one schema, one path.

Every entry point (a study's YAML, ``fedsc run --param``/``--mechanism``, ``RunConfig``
in Python, ``fedsc.tl``) reaches these checks through :class:`fedsc.run.config.RunConfig`
(or, for ``fedsc.tl``, :func:`check_tl_dp`) before any data are read, so a setting is
either used exactly as written or refused with a message naming the fix; nothing is
skipped silently.

* ``dp``: :data:`DP_SCHEMA` gives each key's type and range (numbers may be written as
  numeric strings, as PyYAML reads ``1e-3``; ``true`` is not a number), then
  :func:`fedsc.privacy.run_dp.check_run_dp` checks what depends on the method.
* ``mechanisms``: each entry is a registered name with its options (``{clip: {max_norm:
  1.0}}``; CLI ``--mechanism clip:max_norm=1.0``); option names, required options and
  types come from the mechanism's constructor, ranges from building it once.
* ``attacks``: names of :data:`fedsc.privacy.ATTACKS`; an attack that requires what the
  method does not reveal (``Attack.requires`` vs ``MethodSpec.reveals``), or one that the
  run's scenario or inclusion setting would leave without its ground truth, is refused.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedsc.errors import FedscInputError

if TYPE_CHECKING:
    from fedsc.methods.spec import MethodSpec
    from fedsc.privacy.attacks import Attack
    from fedsc.registry import Registry
    from fedsc.run.config import RunConfig

__all__ = [
    "DP_SCHEMA",
    "EPSILON_RANGE",
    "RUN_ONLY_DP_KEYS",
    "check_attacks",
    "check_dp_schema",
    "check_mechanism_options",
    "check_privacy_combinations",
    "check_tl_dp",
    "mechanism_name",
    "parse_mechanism_arg",
    "smpc_mechanism",
]

#: target_epsilon a run may ask for. Below 0.01 the calibrated noise exceeds 10^4 times
#: the clipping bound (dp-accounting's RDP accountant: sigma ~ 800 already at epsilon 0.01
#: over 8 rounds): the model learns nothing. Above 1000 a guarantee means nothing and the
#: accountant's search for sigma finds no bracket (epsilon 1e9 failed with "Unable to find
#: bracketing interval").
EPSILON_RANGE = (0.01, 1000.0)

#: An example DP block, quoted in messages.
DP_EXAMPLE = "dp: {level: client, target_epsilon: 4, clip: 1.0, delta: 1e-3}"

#: key -> (kind, may be None, what it is): the types and ranges of ``RunConfig.dp``.
DP_SCHEMA: dict[str, tuple[str, bool, str]] = {
    "level": (
        "choice:client,cell,donor",
        False,
        "the unit protected: client, cell or donor (every cell of one person)",
    ),
    "noise_multiplier": (
        "non-negative",
        True,
        "sigma >= 0, the noise std over the clipping bound (e.g. 1.0; 0: the DP pipeline "
        "without noise, the control, epsilon = inf); null: calibrate it to target_epsilon",
    ),
    "target_epsilon": (
        "epsilon",
        True,
        f"the epsilon budget, in [{EPSILON_RANGE[0]}, {EPSILON_RANGE[1]:g}] (typical: 1-10)",
    ),
    "clip": ("positive", False, "C > 0, the L2 bound of an update (client) or gradient (cell)"),
    "delta": ("probability", False, "delta in (0, 1), well below 1/n (e.g. 1e-5)"),
    "accountant": ("choice:rdp,pld", False, "rdp or pld"),
    "simulated": ("bool", False, "true or false (true: seeded noise, never private)"),
    "donor_sampling_rate": (
        "rate",
        False,
        "level donor: the probability q in (0, 1] that a donor joins a DP-SGD step (e.g. 0.2)",
    ),
    "cells_per_donor": (
        "count",
        False,
        "level donor: the most cells one sampled donor gives a step (a whole number, e.g. 16)",
    ),
    "clients": (
        "choice:batch,donor",
        False,
        "level client: what a client is, one per batch (default) or one per donor "
        "(the run's donor_key)",
    ),
}

#: ``dp`` keys that are run settings, not :class:`~fedsc.privacy.accounting.DPConfig`
#: fields (dropped before one is built).
RUN_ONLY_DP_KEYS = ("clients",)


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number or a numeric string (not a bool); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def check_dp_schema(dp: Any) -> dict[str, Any] | None:
    """``RunConfig.dp`` checked key by key against :data:`DP_SCHEMA`; numbers normalised.

    ``None`` is DP off. Raises :class:`FedscInputError` naming the key, what was given and
    what it must be. What depends on the method (cell level is FedscGen's) is checked by
    :func:`fedsc.privacy.run_dp.check_run_dp` afterwards.
    """
    if dp is None:
        return None
    if not isinstance(dp, Mapping):
        hint = " (to turn DP off, drop dp or write dp: null)" if dp in (False, "off") else ""
        raise FedscInputError(
            f"dp must be a mapping of DP settings, got {dp!r} ({type(dp).__name__}){hint}; "
            f"e.g. {DP_EXAMPLE}."
        )
    out = dict(dp)
    unknown = sorted(str(k) for k in out if k not in DP_SCHEMA and k not in ("client", "cell"))
    if unknown:
        raise FedscInputError(
            f"dp: unknown key(s) {unknown}; known keys: {sorted(DP_SCHEMA)} (e.g. {DP_EXAMPLE})."
        )
    level = out.get("level")
    if isinstance(level, list | tuple | set) or (
        isinstance(level, str) and "client" in level and "cell" in level
    ):
        return out  # both levels: run_dp's refusal explains the one-level rule
    for key, (kind, nullable, what) in DP_SCHEMA.items():
        if key not in out:
            continue
        value = out[key]
        if value is None:
            if nullable:
                continue
            raise FedscInputError(f"dp.{key} cannot be null; it is {what}.")
        out[key] = _check_dp_value(key, kind, value, what)
    if out.get("noise_multiplier") is None and out.get("target_epsilon") is None:
        if "noise_multiplier" in out or "target_epsilon" in out:
            raise FedscInputError(
                "dp: give noise_multiplier (sigma > 0) or target_epsilon (sigma is then "
                f"calibrated), e.g. {DP_EXAMPLE}; to turn DP off, drop dp."
            )
    return out


def _check_dp_value(key: str, kind: str, value: Any, what: str) -> Any:
    if kind.startswith("choice:"):
        choices = kind.removeprefix("choice:").split(",")
        if value not in choices:
            raise FedscInputError(f"dp.{key} must be one of {choices}, got {value!r}.")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise FedscInputError(f"dp.{key} must be true or false, got {value!r}.")
        return value
    x = _number(value)
    if x is None:
        raise FedscInputError(
            f"dp.{key} must be a number ({what}), got {value!r} ({type(value).__name__})."
        )
    if not math.isfinite(x):
        raise FedscInputError(f"dp.{key} must be finite ({what}), got {value!r}.")
    if kind == "positive" and not x > 0:
        raise FedscInputError(
            f"dp.{key} must be > 0 ({what}), got {value!r}; to turn DP off, drop dp."
        )
    if kind == "non-negative" and not x >= 0:
        raise FedscInputError(
            f"dp.{key} must be >= 0 ({what}), got {value!r}; to turn DP off, drop dp."
        )
    if kind == "rate" and not 0 < x <= 1:
        raise FedscInputError(f"dp.{key} must be in (0, 1] ({what}), got {value!r}.")
    if kind == "count":
        if isinstance(value, bool) or x != int(x) or x < 1:
            raise FedscInputError(f"dp.{key} must be a whole number >= 1 ({what}), got {value!r}.")
        return int(x)
    if kind == "probability" and not 0 < x < 1:
        raise FedscInputError(f"dp.{key} must be in (0, 1) ({what}), got {value!r}.")
    if kind == "epsilon":
        low, high = EPSILON_RANGE
        if x > high:
            raise FedscInputError(
                f"dp.target_epsilon={value!r} is too large to mean anything: an epsilon "
                f"above {high:g} bounds no adversary, and no noise level is calibrated to "
                f"it. Choose target_epsilon in [{low}, {high:g}] (1-10 is typical), set "
                "noise_multiplier directly (e.g. 0.5), or drop dp for a run without DP."
            )
        if x < low:
            raise FedscInputError(
                f"dp.target_epsilon={value!r} is too small: it needs noise over 10^4 times "
                f"the clipping bound, and the model would learn nothing. Choose "
                f"target_epsilon in [{low}, {high:g}] (1-10 is typical), or set "
                "noise_multiplier directly (e.g. 5.0)."
            )
    # a number stays as written (4 and 4.0 hash differently: run ids of earlier runs);
    # a numeric string (PyYAML reads 1e-3 as one) becomes the number it spells
    return x if isinstance(value, str) else value


# ------------------------------------------------------------------------------ mechanisms
#: A mechanism entry in a run config, quoted in messages.
MECHANISM_EXAMPLE = "mechanisms: [{clip: {max_norm: 1.0}}] (CLI: --mechanism clip:max_norm=1.0)"


def smpc_mechanism(entry: Any) -> Any:
    """A run config's mechanism entry (name or ``{name: {options}}``) as smpc takes it."""
    if isinstance(entry, Mapping) and len(entry) == 1 and "name" not in entry:
        name, opts = next(iter(entry.items()))
        return (str(name), dict(opts or {}))
    return entry


def parse_mechanism_arg(text: str) -> Any:
    """``--mechanism NAME[:KEY=VALUE,...]`` as a run config entry.

    ``clip:max_norm=1.0`` -> ``{"clip": {"max_norm": 1.0}}``; ``NAME`` alone -> ``"NAME"``.
    Values are read as JSON where they parse (``1e-3``, ``true``), else kept as text.
    """
    import json

    name, sep, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise FedscInputError(
            f"--mechanism {text!r} names no mechanism; write NAME or NAME:KEY=VALUE,... "
            "(e.g. --mechanism clip:max_norm=1.0)."
        )
    if not sep:
        return name
    options: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise FedscInputError(
                f"--mechanism {text!r}: option {pair!r} is not KEY=VALUE "
                f"(e.g. --mechanism {name}:max_norm=1.0)."
            )
        if key.strip() in options:
            raise FedscInputError(f"--mechanism {text!r} sets option {key.strip()!r} twice.")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return {name: options}


def _option_kinds(factory: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """A mechanism factory's keyword options and their annotated types (where resolvable)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = {
        n: p
        for n, p in inspect.signature(target).parameters.items()
        if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: the constructor checks types itself
        hints = {}
    return params, hints


def _kind_ok(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits a simple annotation (float/int/bool/str, optionally None)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = set(typing.get_args(hint)) if union else {hint}
    if value is None:
        return type(None) in args
    args.discard(type(None))
    if not args <= {float, int, bool, str}:
        return None  # not a simple type: leave it to the constructor
    if isinstance(value, bool):
        return bool in args
    if isinstance(value, int):
        return bool({int, float} & args)
    if isinstance(value, float):
        return float in args or (int in args and value.is_integer())
    if isinstance(value, str):
        return str in args
    return False


def mechanism_name(entry: Any) -> str:
    """A mechanism entry is a name or a one-key mapping ``{name: {option: value}}``."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and len(entry) == 1:
        return str(next(iter(entry)))
    raise FedscInputError(
        f"a mechanism must be a name or {{name: {{options}}}}, got {entry!r} "
        "(e.g. mechanisms: [{clip: {max_norm: 1.0}}, {quantize: {step: 0.001}}]; CLI: "
        "--mechanism clip:max_norm=1.0)."
    )


def check_mechanism_options(entry: Any, registry: Mapping[str, Any]) -> Any:
    """One mechanism entry checked against its constructor; numeric strings read as numbers.

    Refuses unknown options (listing the valid ones), missing required options, values of
    the wrong type (``true`` for a number), and values the mechanism itself refuses
    (``quantize`` ``step: -1``), each naming the entry and an example.
    """
    name = mechanism_name(entry)
    factory = registry[name]
    raw = None if isinstance(entry, str) else next(iter(entry.values()))
    if raw is not None and not (isinstance(raw, Mapping) and all(isinstance(k, str) for k in raw)):
        raise FedscInputError(
            f"mechanism {name}: options must be a mapping of option names to values, got "
            f"{raw!r}; e.g. {MECHANISM_EXAMPLE}."
        )
    options = dict(raw or {})
    params, hints = _option_kinds(factory)
    example = ", ".join(f"{n}=..." for n, p in params.items() if p.default is p.empty)
    cli = f"--mechanism {name}:{example}" if example else f"--mechanism {name}"
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise FedscInputError(
            f"mechanism {name}: unknown option(s) {unknown}; valid options: {sorted(params)} "
            f"(e.g. {cli})."
        )
    missing = [n for n, p in params.items() if p.default is p.empty and n not in options]
    if missing:
        raise FedscInputError(
            f"mechanism {name} needs option(s) {missing}; write {{{name}: {{"
            + ", ".join(f"{m}: ..." for m in missing)
            + f"}}}} in mechanisms (CLI: {cli})."
        )
    for key, value in list(options.items()):
        hint = hints.get(key)
        if hint is None:
            continue
        if isinstance(value, str) and _kind_ok(1.0, hint) and not _kind_ok(value, hint):
            number = _number(value)
            if number is not None:
                value = int(number) if number.is_integer() and not _kind_ok(1.5, hint) else number
                options[key] = value
        ok = _kind_ok(value, hint)
        if ok is False:
            want = getattr(hint, "__name__", str(hint).replace("typing.", ""))
            raise FedscInputError(
                f"mechanism {name}: option {key} expects {want}, got {value!r} "
                f"({type(value).__name__}) (e.g. {cli})."
            )
    try:
        factory(**options)
    except (ValueError, TypeError) as err:
        reason = str(err).removeprefix(f"{name}: ").rstrip(".")
        raise FedscInputError(f"mechanism {name}: {reason} (e.g. {cli}).") from None
    return name if not options and isinstance(entry, str) else {name: options}


# ---------------------------------------------------------------------------------- attacks
def check_attacks(attacks: Any, known: Registry[Attack], spec: MethodSpec) -> list[str]:
    """Attack names: registered ones, each once, that apply to the method.

    ``known`` maps names to :class:`fedsc.privacy.attacks.Attack` (the registry); an
    attack applies when the method reveals what it requires (``Attack.applies_to``).
    """
    if attacks is None:
        return []
    if isinstance(attacks, str):
        attacks = [attacks]  # one name, not its characters
    if not isinstance(attacks, list | tuple):
        raise FedscInputError(
            f"attacks must be a list of attack names (e.g. attacks: [update_recovery]), got "
            f"{attacks!r}."
        )
    bad = [a for a in attacks if not isinstance(a, str) or not a]
    if bad:
        raise FedscInputError(
            f"attacks lists {bad}; attack names are strings, choose from {sorted(known)}."
        )
    names = [str(a) for a in attacks]
    unknown = [a for a in names if a not in known]
    if unknown:
        raise FedscInputError(f"unknown attack(s) {unknown}; choose from {sorted(known)}.")
    dups = sorted({a for a in names if names.count(a) > 1})
    if dups:
        raise FedscInputError(f"attacks lists {dups} more than once; list each attack once.")
    if names and not spec.federated:
        raise FedscInputError(
            f"{spec.name} is centralized (all cells in one place): there is no federated "
            "computation to attack; drop `attacks`."
        )
    other = [a for a in names if not known[a].applies_to(spec)]
    if other:
        from fedsc.methods import REGISTRY

        readers = sorted(
            m.name for _, m in REGISTRY.items() if all(known[a].applies_to(m) for a in other)
        )
        needed = sorted(set().union(*(known[a].requires for a in other)) - spec.reveals)
        fits = sorted(a for a in known if known[a].applies_to(spec))
        runs = f"a {'/'.join(readers)} run" if readers else "another method's run"
        raise FedscInputError(
            f"attack(s) {sorted(other)} read {runs}, not "
            f"{spec.name}: they read {needed}, which {spec.name} does not reveal, so they "
            f"would measure nothing here. Attacks for {spec.name}: {fits}."
        )
    return names


def check_privacy_combinations(cfg: RunConfig) -> None:
    """Attacks and DP against the run's scenario and inclusion: refused, never skipped.

    * Attacks read one training over the run's clients; a dataset-evolution scenario trains
      once per stage on changing clients, which no attack models yet.
    * FedscGen's attacks score against the clients' cells and splits, which an inclusion
      scenario changes: they would return no rows.
    * DP calibrates sigma to one training of ``rounds`` rounds; a scenario trains several
      times, so the run would spend more than ``target_epsilon``.
    """
    if cfg.scenario is not None and cfg.attacks:
        raise FedscInputError(
            f"attacks {cfg.attacks} cannot run with the dataset-evolution scenario "
            f"{cfg.scenario!r} (the attacks model one training, a scenario trains once per "
            "stage); drop attacks, or run the attacks without the scenario."
        )
    if cfg.scenario is not None and cfg.dp is not None:
        raise FedscInputError(
            f"dp cannot be combined with the dataset-evolution scenario {cfg.scenario!r}: "
            "sigma is calibrated to one training of `rounds` rounds and each stage trains "
            "again, so the run would spend more than target_epsilon; drop dp or the scenario."
        )
    _check_owner_revealed(cfg)
    _check_donor_settings(cfg)
    if not cfg.attacks:
        return  # the attack registry imports torch: not for a run without attacks
    from fedsc.privacy.attacks import ATTACKS

    _check_party_attacks(cfg, ATTACKS)
    dropped = [a for a in cfg.attacks if a in ATTACKS and "fedscgen" in ATTACKS[a].needs]
    if dropped and cfg.inclusion != "all":
        raise FedscInputError(
            f"attacks {dropped} score against every client's cells, which inclusion "
            f"{cfg.inclusion!r} changes: they would return no rows. Use inclusion: all with "
            "these attacks, or drop them (update_recovery works with any inclusion)."
        )


_PARTY_OBSERVERS = frozenset({"party", "colluding_parties"})


def _check_donor_settings(cfg: RunConfig) -> None:
    """Donor-level DP and donors as clients need the run's ``donor_key``; ``clients`` is client level's."""
    dp = cfg.dp if isinstance(cfg.dp, Mapping) else {}
    level = dp.get("level", "client")
    clients = dp.get("clients", "batch")
    if clients != "batch" and level != "client":
        raise FedscInputError(
            f"dp.clients: {clients} chooses what a client is for client-level DP; this dp has "
            f"level: {level}. Drop clients, or use level: client."
        )
    wants = level == "donor" or clients == "donor"
    if wants and not getattr(cfg, "donor_key", None):
        what = "donor-level DP" if level == "donor" else "dp.clients: donor"
        raise FedscInputError(
            f"{what} needs the run's donor_key (the obs column naming each cell's donor, "
            "separate from batch_key), e.g. donor_key: donor."
        )


def _check_party_attacks(cfg: RunConfig, attacks: Registry[Attack]) -> None:
    """Refuse attacks that read only computation parties' views on a partyless backend.

    They would run nothing and return no rows.
    """
    from smpc.registry import HAS_PARTIES, has_parties

    if has_parties(str(cfg.backend)):
        return
    only = [
        a
        for a in cfg.attacks
        if a in attacks and attacks[a].observers and set(attacks[a].observers) <= _PARTY_OBSERVERS
    ]
    if only:
        with_parties = sorted(b for b, has in HAS_PARTIES.items() if has)
        raise FedscInputError(
            f"attack(s) {only} read what the computation parties receive, and backend "
            f"{cfg.backend!r} has no parties: they would return no rows. Use them with "
            f"backend {', '.join(with_parties)}, or drop them."
        )


def _check_owner_revealed(cfg: RunConfig) -> None:
    """``secure_rows`` (owner-revealed means) with what needs the whole mean: refused.

    The mean of a ``weighted_mean_to_owners`` is never whole at the coordinator, so no
    mechanism (clip, quantize, DP noise) and no recorder of the attacks can act on it; the
    run failed after loading the data (NotImplementedError).
    """
    from fedsc.methods import get_method

    config = get_method(cfg.method).make_config(dict(cfg.params))
    if not getattr(config, "secure_rows", False):
        return
    clash = {
        "attacks": bool(cfg.attacks),
        "mechanisms": bool(cfg.mechanisms),
        "dp": cfg.dp is not None,
    }
    bad = [k for k, v in clash.items() if v]
    if bad:
        raise FedscInputError(
            f"secure_rows cannot be combined with {bad}: each client's row of the mean is "
            "revealed to that client alone and is never whole at the coordinator, where "
            "mechanisms, DP noise and the attacks' recorder act on it. Drop secure_rows "
            "(the paper's protocol), or drop " + " and ".join(bad) + "."
        )


def check_attack_clients(cfg: RunConfig, batches: Sequence[str]) -> None:
    """Attacks need at least two training clients (one target, one other observer).

    Checked once the data are loaded (the batches are known), before any training.
    """
    if not cfg.attacks:
        return
    training = sorted(set(map(str, batches)) - set(cfg.holdout))
    if len(training) < 2:
        raise FedscInputError(
            f"attacks {cfg.attacks} need at least two training clients (batches of "
            f"{cfg.batch_key!r}), this run trains {training}: with one client there is no "
            "federation to attack. Train on more batches (fewer holdouts) or drop attacks."
        )


# --------------------------------------------------------------------------------- fedsc.tl
def check_tl_dp(config: Any, aggregator: Any) -> None:
    """``fedsc.tl``: client-level DP in a method config needs the gaussian mechanism.

    ``FedScGenConfig(dp={level: client, ...})`` only switches the model to its DP variant
    (GroupNorm, clipping in the mechanism); the noise comes from the aggregator's
    ``gaussian`` mechanism. Without one the model trains with no noise and no epsilon.
    """
    dp = getattr(config, "dp", None)
    if not isinstance(dp, Mapping) or dp.get("level", "client") != "client":
        return
    if _has_gaussian(aggregator):
        return
    raise FedscInputError(
        "dp={level: client, ...} in the method config adds no noise by itself: client-level "
        "DP is the aggregator's gaussian mechanism, and this aggregator has none (the model "
        "would train without noise and no epsilon). Use a run config (RunConfig(..., "
        "dp={level: client, target_epsilon: 4, clip: 1.0, delta: 1e-3}) with "
        "fedsc.run.execute.execute_run, or `fedsc run --param 'dp=...'`), which calibrates, adds "
        "and accounts the noise; or pass backend=smpc.make_aggregator('plaintext', "
        "mechanisms=[DPConfig(...).resolve(rounds).mechanism_spec()]); or use "
        "dp={level: cell, ...} (DP-SGD inside FedscGen)."
    )


def _has_gaussian(aggregator: Any) -> bool:
    """Whether ``aggregator`` (or one it wraps) applies the ``gaussian`` mechanism."""
    seen = 0
    while aggregator is not None and seen < 16:
        for mech in getattr(aggregator, "mechanisms", ()) or ():
            if getattr(mech, "name", None) == "gaussian":
                return True
        aggregator = getattr(aggregator, "inner", None)
        seen += 1
    return False
