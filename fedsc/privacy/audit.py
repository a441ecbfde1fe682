"""Empirical privacy audit: canaries through the real DP mechanisms, a lower bound on ε.

A claimed ε comes from an accountant (:mod:`fedsc.privacy.accounting`); it is only as
good as the code that adds the noise. The audit checks the code: it inserts ``m``
canaries (clients for client-level DP, cells for cell-level DP), each included
independently with probability 1/2, runs the real mechanism once, lets an attacker score
every canary from what the mechanism released, and turns the attacker's guesses into an
ε that the run *demonstrably* spends, with confidence ``1 - beta``. A correct mechanism
gives ``audited <= claimed`` (with probability at least ``1 - beta``, whatever the
attack); ``audited > claimed`` means the mechanism does not deliver its claim.

The bound is the one-run audit of Steinke, Nasr & Jagielski, "Privacy Auditing with One
(1) Training Run", NeurIPS 2023 (arXiv:2305.08846), Theorem 3 with the δ correction of
their Algorithm 2. It is written out here (:func:`one_run_p_value`) because the one
maintained implementation (``jax_privacy.auditing``) needs JAX; it uses scipy's binomial
distribution. One run can certify at most about ``log(m / log(1/beta))`` (all guesses
right), so a one-run audit is loose at large ε: it catches gross failures (noise scaled
down, noise an attacker can regenerate), not a few percent of missing noise.

Two audits, each through the code a run uses:

- :func:`audit_client_level`: canary *clients* through the real aggregator
  (``smpc.make_aggregator(backend, mechanisms=[gaussian])``) for ``rounds`` rounds of
  FedAvg. Canary j owns coordinate j; included, its update is ``2C e_j`` (clipped to C by
  the mechanism), excluded, zero (the mechanism's zero-out neighbouring relation). The
  attacker's score is the released mean's movement along ``e_j`` summed over rounds
  (``observer="output"``) or, for the plaintext coordinator, canary j's own noised row
  (``observer="coordinator"``; its claim is the larger
  ``client_level_from_ledger(observer="coordinator")``).
- :func:`audit_cell_level`: canary *cells* through the real DP-SGD
  (:func:`fedsc.methods.dp_sgd.local_train`, Opacus) on a small DP-variant VAE. Canary j
  expresses only its reserved gene j, so its per-cell gradient is the only one that
  reaches column j of the first encoder layer; the score is that column's movement
  along the canary's own clipped gradient, as a log-likelihood ratio summed over rounds
  (white box: the attacker sees every round's state, as FedscGen's coordinator does).

Noise an attacker can regenerate is not noise: with a seeded mechanism
(``noise_seed=`` for client level, ``DPConfig(simulated=True)`` for DP-SGD, whose seed a
run publishes) the attacker replays the noise with the published seed (the same code on
all-zero canary data) and subtracts it before scoring; its guesses are then (almost) all
right.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

from fedsc.errors import FedscInputError
from fedsc.privacy.accounting import DPConfig, client_level_from_ledger

if TYPE_CHECKING:
    from smpc.mechanisms.base import Mechanism

__all__ = [
    "AUDIT_OBSERVERS",
    "DEFAULT_GUESS_FRACTIONS",
    "AuditResult",
    "ScoreAudit",
    "audit_cell_level",
    "audit_client_level",
    "audit_donor_level",
    "epsilon_from_scores",
    "guesses_from_scores",
    "largest_gap_threshold",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "two_means_threshold",
]

#: Fractions of the canaries the attacker guesses (half "in" from the top scores, half
#: "out" from the bottom, abstaining on the rest); with the two threshold rules that guess
#: every canary, the bound takes the best rule, Bonferroni-corrected (each rule at
#: ``beta / rules``) so that picking the best after the fact stays valid.
DEFAULT_GUESS_FRACTIONS: tuple[float, ...] = (0.1, 0.25, 0.5)

#: Observers :func:`audit_client_level` attacks: the reader of the released aggregates,
#: and the plaintext coordinator that receives every client's noised contribution.
AUDIT_OBSERVERS: tuple[str, ...] = ("output", "coordinator")

#: ``noise`` of an :class:`AuditResult`.
NOISE_FRESH = "fresh OS entropy"
NOISE_PUBLISHED = "seeded, seed published (replayed by the attacker)"


# --------------------------------------------------------------------------- the bound
def _check_counts(correct: int, guesses: int, m: int) -> None:
    for name, v in (("guesses_correct", correct), ("guesses_made", guesses), ("m", m)):
        if int(v) != v:
            raise FedscInputError(f"audit: {name} must be an integer, got {v!r}.")
    if not 0 <= correct <= guesses <= m:
        raise FedscInputError(
            f"audit: need 0 <= guesses_correct <= guesses_made <= m (canaries), got "
            f"{correct}, {guesses}, {m}."
        )


def _check_delta_beta(delta: float, beta: float) -> None:
    if not 0 <= delta < 1:
        raise FedscInputError(f"audit: delta must be in [0, 1), got {delta!r}.")
    if not 0 < beta < 1:
        raise FedscInputError(
            f"audit: beta (1 - confidence) must be in (0, 1), got {beta!r}; e.g. 0.05."
        )


def one_run_p_value(
    guesses_correct: int, guesses_made: int, m: int, epsilon: float, delta: float
) -> float:
    """P[at least ``guesses_correct`` right] if the mechanism were (ε, δ)-DP.

    Steinke, Nasr & Jagielski (NeurIPS 2023), Theorem 3 and Algorithm 2: ``m`` canaries
    each included with probability 1/2; an attacker guesses ``r = guesses_made`` of them
    (abstaining on the rest) and gets ``v = guesses_correct`` right. Under (ε, δ)-DP

        P[V >= v] <= P[Binomial(r, p) >= v] + 2 m δ · max_{1<=i<=v} P[v-i <= Binomial(r, p) < v] / i

    with ``p = e^ε / (1 + e^ε)`` (the accuracy of ε-randomised response). Returns the
    right-hand side, capped at 1.
    """
    _check_counts(guesses_correct, guesses_made, m)
    _check_delta_beta(delta, 0.5)
    if not (epsilon >= 0 and not math.isnan(epsilon)):
        raise FedscInputError(f"audit: epsilon must be >= 0, got {epsilon!r}.")
    v, r = int(guesses_correct), int(guesses_made)
    p = float(scipy.special.expit(epsilon))
    tail = float(scipy.stats.binom.sf(v - 1, r, p))  # P[Binomial(r, p) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    # P[v - i <= B < v] = P[B >= v - i] - P[B >= v]
    window = scipy.stats.binom.sf(v - i - 1, r, p) - tail
    alpha = float(np.max(window / i))
    return min(tail + 2.0 * m * delta * alpha, 1.0)


def one_run_epsilon_lower_bound(
    guesses_correct: int,
    guesses_made: int,
    m: int,
    delta: float,
    beta: float = 0.05,
) -> float:
    """The largest ε that ``guesses_correct`` of ``guesses_made`` right rejects.

    That is ``sup {ε >= 0 : one_run_p_value(..., ε, δ) <= beta}``: a mechanism claiming
    (ε', δ)-DP with ε' below the result is refuted at confidence ``1 - beta``. 0 when the
    observation refutes nothing (e.g. guesses no better than chance). Steinke, Nasr &
    Jagielski, NeurIPS 2023 (Algorithm 2, here solved with Brent's method).

    Parameters
    ----------
    guesses_correct, guesses_made
        v and r: right guesses and guesses made (abstentions excluded).
    m
        Number of canaries (each included with probability 1/2).
    delta
        δ of the claim being audited.
    beta
        1 - confidence.
    """
    _check_counts(guesses_correct, guesses_made, m)
    _check_delta_beta(delta, beta)

    def gap(eps: float) -> float:
        return beta - one_run_p_value(guesses_correct, guesses_made, m, eps, delta)

    if gap(0.0) <= 0:
        return 0.0
    hi = 1.0
    while gap(hi) > 0:  # the p-value grows with ε to 1 (or to the δ term): bracket it
        hi *= 2.0
        if hi > 1e4:  # pragma: no cover - only with r far beyond any audit's size
            return math.inf
    return float(scipy.optimize.brentq(gap, 0.0, hi, xtol=1e-9))


def _checked_scores(
    scores: Sequence[float] | np.ndarray, included: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    if s.shape != inc.shape or s.ndim != 1:
        raise FedscInputError(
            f"audit: scores and included must be 1-D of the same length, got {s.shape} "
            f"and {inc.shape}."
        )
    if len(s) < 2:
        raise FedscInputError(f"audit: need at least 2 canaries, got {len(s)}.")
    if not np.all(np.isfinite(s)):
        raise FedscInputError("audit: scores must be finite.")
    return s, inc


def guesses_from_scores(
    scores: Sequence[float] | np.ndarray, included: Sequence[bool] | np.ndarray, guesses: int
) -> tuple[int, int]:
    """(guesses made, right ones) when guessing ``guesses // 2`` "in" and as many "out".

    The canaries with the ``guesses // 2`` highest scores are guessed included, those with
    the ``guesses // 2`` lowest excluded; the attacker abstains on the rest.
    """
    s, inc = _checked_scores(scores, included)
    k = int(guesses) // 2
    if not 1 <= k <= len(s) // 2:
        raise FedscInputError(
            f"audit: guesses={guesses} must be between 2 and the number of canaries ({len(s)})."
        )
    order = np.argsort(s, kind="stable")
    correct = int(inc[order[-k:]].sum() + (~inc[order[:k]]).sum())
    return 2 * k, correct


def two_means_threshold(scores: Sequence[float] | np.ndarray) -> float:
    """The split of the scores into two groups with the least within-group sum of squares.

    Exact 1-D two-means (every split of the sorted scores is tried); returns the midpoint
    between the groups. It depends on the scores only, so guessing "in" above it and "out"
    below it is a valid guess for the one-run bound; it finds the gap between included and
    excluded canaries whatever their numbers.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    if n < 2:
        raise FedscInputError(f"audit: need at least 2 scores, got {n}.")
    c1, c2 = np.cumsum(s), np.cumsum(s * s)
    i = np.arange(1, n)  # left group s[:i], right group s[i:]
    left = c2[i - 1] - c1[i - 1] ** 2 / i
    right = (c2[-1] - c2[i - 1]) - (c1[-1] - c1[i - 1]) ** 2 / (n - i)
    best = int(np.argmin(left + right)) + 1
    return float((s[best - 1] + s[best]) / 2)


def largest_gap_threshold(scores: Sequence[float] | np.ndarray) -> float:
    """The midpoint of the largest gap between consecutive sorted scores.

    A function of the scores only (a valid guess rule): where the included canaries'
    scores are cleanly separated from the excluded ones (e.g. after subtracting replayed
    noise), this is the separation, whatever the spread inside each group.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) < 2:
        raise FedscInputError(f"audit: need at least 2 scores, got {len(s)}.")
    i = int(np.argmax(np.diff(s)))
    return float((s[i] + s[i + 1]) / 2)


@dataclass(frozen=True)
class ScoreAudit:
    """The best guessing rule's result (:func:`epsilon_from_scores`).

    Attributes
    ----------
    epsilon
        The audited ε (Bonferroni-corrected over the rules tried).
    guesses, correct
        Guesses made and right ones under the best rule.
    rule
        The best rule (``"top/bottom 2k"``, ``"two-means threshold"`` or
        ``"largest-gap threshold"``).
    rules
        The rules tried.
    """

    epsilon: float
    guesses: int
    correct: int
    rule: str
    rules: tuple[str, ...]


def epsilon_from_scores(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    delta: float,
    beta: float = 0.05,
    guess_fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS,
    *,
    thresholds: bool = True,
) -> ScoreAudit:
    """Audited ε from canary scores: the best of a few guessing rules, Bonferroni-corrected.

    Rules: for each fraction f, guess the top ``round(f·m/2)`` canaries "in" and as many
    bottom ones "out" (:func:`guesses_from_scores`); with ``thresholds``, also guess every
    canary "in" above :func:`two_means_threshold` and "out" below it, and the same with
    :func:`largest_gap_threshold`. Each rule is tested at ``beta / (number of rules)``, so
    that the best of them holds at confidence ``1 - beta`` (Bonferroni).
    """
    s, inc = _checked_scores(scores, included)
    m = len(s)
    if any(not 0 < f <= 1 for f in guess_fractions):
        raise FedscInputError(
            f"audit: guess_fractions must be fractions in (0, 1], got {guess_fractions!r}."
        )
    ks = sorted({min(max(1, round(f * m / 2)), m // 2) for f in guess_fractions})
    rules: list[tuple[str, int, int]] = []
    for k in ks:
        made, right = guesses_from_scores(s, inc, 2 * k)
        rules.append((f"top/bottom {2 * k}", made, right))
    if thresholds:
        for name, cut in (
            ("two-means threshold", two_means_threshold(s)),
            ("largest-gap threshold", largest_gap_threshold(s)),
        ):
            rules.append((name, m, int(((s > cut) == inc).sum())))
    if not rules:
        raise FedscInputError("audit: no guessing rule: give guess_fractions or thresholds.")
    level = beta / len(rules)
    names = tuple(name for name, _, _ in rules)
    best = ScoreAudit(-1.0, 0, 0, "", names)
    for name, made, right in rules:
        eps = one_run_epsilon_lower_bound(right, made, m, delta, level)
        if eps > best.epsilon:
            best = ScoreAudit(eps, made, right, name, names)
    return best


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class AuditResult:
    """One audit: the claim beside what the canaries show.

    Attributes
    ----------
    level
        ``"client"`` or ``"cell"``.
    observer
        Whose view was attacked (``"output"``: the released aggregates or states;
        ``"coordinator"``: each client's noised contribution).
    claimed_epsilon
        ε the run claims for that observer (the accountant's, read off what ran).
    audited_epsilon
        Empirical lower bound: the run spends at least this ε, with confidence
        ``1 - beta``.
    delta, beta
        δ of the claim; 1 - confidence of the bound.
    n_canaries, n_included
        m canaries; how many were included (each with probability 1/2).
    guesses, correct
        The attacker's guesses at the best guess count and how many were right.
    noise_multiplier, clip
        σ and C of the claim.
    steps, sampling_rate
        Gaussian releases composed (rounds, or DP-SGD steps) and their sampling rate.
    noise
        Where the noise came from and whether the attacker replayed it.
    seconds
        Wall time of the audit.
    details
        Setting-specific values (rounds, clients, model sizes, guess counts tried).
    """

    level: str
    observer: str
    claimed_epsilon: float
    audited_epsilon: float
    delta: float
    beta: float
    n_canaries: int
    n_included: int
    guesses: int
    correct: int
    noise_multiplier: float
    clip: float
    steps: int
    sampling_rate: float
    noise: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        """Whether the audit is consistent with the claim (audited ≤ claimed)."""
        return self.audited_epsilon <= self.claimed_epsilon

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (ε = ∞ as ``None``), with ``consistent``."""
        out = dataclasses.asdict(self)
        for key in ("claimed_epsilon", "audited_epsilon"):
            if math.isinf(out[key]):
                out[key] = None
        out["consistent"] = self.consistent
        return out


def _audit_result(
    found: ScoreAudit,
    dp: DPConfig,
    *,
    level: str,
    observer: str,
    claimed_epsilon: float,
    beta: float,
    included: np.ndarray,
    clip: float,
    steps: int,
    sampling_rate: float,
    noise: str,
    start: float,
    details: dict[str, Any],
) -> AuditResult:
    """An :class:`AuditResult` from the scores' audit (the fields every audit shares)."""
    return AuditResult(
        level=level,
        observer=observer,
        claimed_epsilon=float(claimed_epsilon),
        audited_epsilon=found.epsilon,
        delta=float(dp.delta),
        beta=float(beta),
        n_canaries=len(included),
        n_included=int(included.sum()),
        guesses=found.guesses,
        correct=found.correct,
        noise_multiplier=float(dp.noise_multiplier or 0.0),
        clip=float(clip),
        steps=int(steps),
        sampling_rate=float(sampling_rate),
        noise=noise,
        seconds=time.perf_counter() - start,
        details={**details, "rule": found.rule, "rules": list(found.rules)},
    )


def _rng_seed(seed: int | None) -> int:
    return secrets.randbits(63) if seed is None else int(seed)


def _check_canaries(n_canaries: int) -> None:
    if int(n_canaries) != n_canaries or n_canaries < 2:
        raise FedscInputError(
            f"audit: n_canaries must be an integer >= 2, got {n_canaries!r}; the bound "
            "grows with it (a few hundred canaries certify ε up to ~4)."
        )


# --------------------------------------------------------------------------- client level
@dataclass
class _FedAvgRun:
    """One audited FedAvg run: per round the reference, the release, the received rows.

    ``received`` (what the plaintext coordinator's process receives) is filled for
    ``observer="coordinator"`` only.
    """

    ledger: Any
    references: list[np.ndarray] = field(default_factory=list)
    released: list[np.ndarray] = field(default_factory=list)
    received: list[np.ndarray] = field(default_factory=list)

    def moves(self, observer: str, m: int) -> np.ndarray:
        """Per round (rows), the movement of coordinate j (column j) seen by ``observer``.

        ``"output"``: in the released mean; ``"coordinator"``: in canary j's own row.
        """
        if observer == "output":
            return np.stack(
                [r - ref for r, ref in zip(self.released, self.references, strict=True)]
            )[:, :m]
        return np.stack(
            [
                np.diagonal(x[:m, :m]) - ref[:m]
                for x, ref in zip(self.received, self.references, strict=True)
            ]
        )


def _fedavg_run(
    backend: str,
    mechanism: Mechanism,
    noise_seed: int | None,
    observer: str,
    reference: np.ndarray,
    rows: Sequence[Sequence[np.ndarray]],
) -> _FedAvgRun:
    """FedAvg rounds through the real aggregator.

    Round t's contributions are ``reference + rows[t][c]``; the release is the next
    round's reference.
    """
    import smpc
    from smpc.mechanisms import MechanismAggregator

    agg = smpc.make_aggregator(backend, mechanisms=[mechanism], mechanism_seed=noise_seed)
    out = _FedAvgRun(agg.ledger)
    try:
        if observer == "coordinator":
            if agg.private or not isinstance(agg, MechanismAggregator):
                raise FedscInputError(
                    f"audit: the {backend!r} backend is private, the coordinator receives no "
                    "contribution; audit observer='coordinator' with backend='plaintext'."
                )
            inner = agg.inner
            receive = inner._weighted_sum

            def spy(matrix: np.ndarray, weights: np.ndarray) -> Any:
                out.received.append(matrix.copy())  # what the coordinator's process receives
                return receive(matrix, weights)

            setattr(inner, "_weighted_sum", spy)  # noqa: B010 - an instance, not the class
        for t, updates in enumerate(rows):
            with agg.ledger.scope(t, "fedavg"):
                mean = agg.weighted_mean(
                    [reference + u for u in updates], [1.0] * len(updates), reference=reference
                )
            out.references.append(reference)
            reference = np.asarray(mean, dtype=np.float64)
            out.released.append(reference)
    finally:
        agg.close()
    return out


def audit_client_level(
    dp: DPConfig,
    *,
    rounds: int,
    n_canaries: int,
    n_clients: int = 4,
    backend: str = "plaintext",
    observer: str = "output",
    seed: int | None = None,
    noise_seed: int | None = None,
    mechanism: Mechanism | None = None,
    beta: float = 0.05,
    guess_fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS,
) -> AuditResult:
    """Audit client-level DP-FedAvg: canary clients through the real ``gaussian`` mechanism.

    ``n_canaries`` canary clients and ``n_clients`` ordinary ones take part in every one
    of ``rounds`` FedAvg rounds (``weighted_mean`` with equal weights under tag
    ``"fedavg"``; the reference is the previous round's release). Canary j, if included
    (probability 1/2), sends the update ``2C e_j`` every round (the mechanism clips it to
    ``C e_j``), else a zero update; ordinary clients send random updates of norm C. The
    score of canary j is the movement of coordinate j summed over rounds: in the released
    means (``observer="output"``), or in canary j's own noised row as the plaintext
    coordinator receives it (``observer="coordinator"``). The claim is
    :func:`~fedsc.privacy.accounting.client_level_from_ledger` of the run's ledger for
    that observer.

    Parameters
    ----------
    dp
        Client-level config (σ, or ``target_epsilon``, calibrated over ``rounds``).
    rounds, n_canaries, n_clients
        Rounds; canary clients (m); ordinary clients.
    backend
        Aggregation backend (``"plaintext"``; ``"crypten"`` for the output view).
    observer
        ``"output"`` or ``"coordinator"`` (needs the plaintext backend).
    seed
        Draws the canaries' inclusion, the start state and the ordinary clients' updates
        (``None``: OS entropy).
    noise_seed
        ``mechanism_seed`` of the aggregator. ``None`` (what runs do): fresh OS entropy.
        An integer is published (research mode): the attacker replays the noise with it.
    mechanism
        The mechanism to audit (default: the ``gaussian`` of ``dp.mechanism_spec()``).
    beta, guess_fractions
        As in :func:`epsilon_from_scores`.
    """
    from smpc.mechanisms import make_mechanism

    start = time.perf_counter()
    if dp.level != "client":
        raise FedscInputError(
            f"audit_client_level needs a client-level DPConfig, got level={dp.level!r} "
            "(cell-level DP-SGD: audit_cell_level)."
        )
    if observer not in AUDIT_OBSERVERS:
        raise FedscInputError(
            f"audit: observer must be one of {list(AUDIT_OBSERVERS)}, got {observer!r}."
        )
    _check_canaries(n_canaries)
    if int(rounds) != rounds or rounds < 1:
        raise FedscInputError(f"audit: rounds must be an integer >= 1, got {rounds!r}.")
    if int(n_clients) != n_clients or n_clients < 0:
        raise FedscInputError(f"audit: n_clients must be an integer >= 0, got {n_clients!r}.")
    m, rounds = int(n_canaries), int(rounds)
    k = m + int(n_clients)
    dp.validate_for(k)
    if dp.noise_multiplier is None:
        dp = dp.resolve(rounds)
    mech = make_mechanism(dp.mechanism_spec()) if mechanism is None else mechanism
    clip = float(dp.clip)

    rng = np.random.default_rng(_rng_seed(seed))
    included = rng.random(m) < 0.5
    dim = m + 4  # one coordinate per canary, a few more
    reference = rng.normal(size=dim) * clip  # any broadcast start state
    canary = np.zeros((m, dim))
    canary[np.flatnonzero(included), np.flatnonzero(included)] = 2.0 * clip
    rows = []
    for _ in range(rounds):
        ordinary = rng.normal(size=(int(n_clients), dim))
        ordinary *= clip / np.linalg.norm(ordinary, axis=1, keepdims=True)
        rows.append([*canary, *ordinary])

    run = _fedavg_run(backend, mech, noise_seed, observer, reference, rows)
    moves = run.moves(observer, m)
    noise_label = NOISE_FRESH
    if noise_seed is not None:
        # The seed is published: replay the same operations with it on all-zero updates
        # (only the noise moves anything) and subtract that noise.
        zeros = [[np.zeros(dim)] * k for _ in range(rounds)]
        replay = _fedavg_run(backend, copy.deepcopy(mech), noise_seed, observer, reference, zeros)
        moves = moves - replay.moves(observer, m)
        noise_label = NOISE_PUBLISHED
    scores = moves.sum(axis=0)
    account = client_level_from_ledger(
        run.ledger, dp.delta, accountant=dp.accountant, observer=observer
    )
    found = epsilon_from_scores(scores, included, dp.delta, beta, guess_fractions)
    return _audit_result(
        found,
        dp,
        level="client",
        observer=observer,
        claimed_epsilon=float(account.epsilon),
        beta=beta,
        included=included,
        clip=clip,
        steps=int(sum(account.releases.values())),
        sampling_rate=1.0,
        noise=noise_label,
        start=start,
        details={
            "rounds": rounds,
            "clients": k,
            "backend": backend,
            "mechanism": repr(mech),
        },
    )


# --------------------------------------------------------------------------- cell level
def _first_weight(model: Any) -> Any:
    """The VAE's first encoder weight (hidden x genes)."""
    from torch import nn

    block = model.encoder[0]
    assert isinstance(block, nn.ModuleDict)
    linear = block["linear"]
    assert isinstance(linear, nn.Linear)
    return linear.weight


def audit_cell_level(
    dp: DPConfig,
    *,
    n_canaries: int,
    n_cells: int = 200,
    n_genes: int = 20,
    rounds: int = 1,
    local_epochs: int = 4,
    batch_size: int | None = None,
    hidden: Sequence[int] = (16,),
    amplitude: float = 10.0,
    lr: float = 1e-3,
    seed: int | None = None,
    clipping: str = "ghost",
    beta: float = 0.05,
    guess_fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS,
) -> AuditResult:
    """Audit cell-level DP-SGD: canary cells through :func:`fedsc.methods.dp_sgd.local_train`.

    One client holds ``n_cells`` ordinary cells (random expression of ``n_genes`` genes)
    and the canaries; canary j expresses only its reserved gene j (value
    ``amplitude``), so only its per-cell gradient reaches column j of the first encoder
    layer. The model is a small DP-variant VAE (``hidden`` units, latent 2, no dropout,
    the log-variance head's bias at -10 so that the reparameterisation noise hardly turns
    a canary's gradient: the guarantee holds for any initial model); ``rounds`` rounds of ``local_epochs`` epochs run through the real ``local_train``
    (Poisson sampling, per-cell clipping, Opacus noise), σ resolved by
    :func:`~fedsc.methods.dp_sgd.resolve_for_clients`. The optimiser is plain SGD (the
    guarantee covers any optimiser: it post-processes the noised gradients; SGD keeps the
    column's movement the sum of the noised gradients, so the score is Gaussian under
    "excluded"). Score of canary j: each round's movement of column j projected on the
    canary's own gradient direction at the round's start state, weighed into a
    log-likelihood ratio with the canary's expected movement (its clipped gradient on
    the column, computed by the attacker), summed over rounds.

    With ``dp.simulated`` the DP noise comes from the run seed, which runs publish: the
    attacker replays each round with that seed on a data set of the same size with every
    canary gene zeroed (only the noise moves the canary columns) and subtracts it.

    The canaries' per-cell gradients have norms of about 0.25-3.4 in this model: with
    ``dp.clip`` at most 0.2 every canary is clipped, i.e. as loud as DP-SGD lets a cell
    be; a larger C leaves them unclipped and the audit looser (still valid).

    Neighbouring relation: the claim's (``dp.relation``). Replace-one (n public): an
    excluded canary's slot holds a substitute cell (random expression of the ordinary
    genes), so every run trains on ``n_cells + n_canaries`` cells. Add-or-remove-one: an
    excluded canary is absent (n_train then moves by one cell per canary, as q = B / n_train
    and the steps with it). The claim is ``local_train``'s own ε
    (``rounds · local_epochs · (n_train // B)`` steps at ``q = B / n_train``).

    Parameters
    ----------
    dp
        Cell-level config (σ, or ``target_epsilon``).
    n_canaries, n_cells, n_genes
        Canary cells (m), ordinary cells and their genes.
    rounds, local_epochs, batch_size
        The DP-SGD schedule; ``batch_size`` is the expected batch B (``None``: every
        training cell in every step, q = 1: no sampling variance, the most decisive
        audit for a given claim; a smaller B audits the Poisson sampling too).
    hidden, amplitude, lr
        The audit model's hidden layers, the canaries' expression value, SGD's rate.
    seed
        Run seed: canaries, data, weights, sampling in simulated mode (``None``: OS
        entropy).
    clipping
        ``"ghost"`` or ``"per_sample"`` (:func:`fedsc.methods.dp_sgd.make_private`).
    beta, guess_fractions
        As in :func:`epsilon_from_scores`.
    """
    start = time.perf_counter()
    if dp.level != "cell":
        raise FedscInputError(
            f"audit_cell_level needs a cell-level DPConfig, got level={dp.level!r} "
            "(client-level DP-FedAvg: audit_client_level)."
        )
    _check_canaries(n_canaries)
    for name, v in (("n_cells", n_cells), ("n_genes", n_genes), ("rounds", rounds)):
        if int(v) != v or v < 1:
            raise FedscInputError(f"audit: {name} must be an integer >= 1, got {v!r}.")
    if not (math.isfinite(lr) and lr > 0 and math.isfinite(amplitude) and amplitude > 0):
        raise FedscInputError(
            f"audit: lr and amplitude must be positive, got lr={lr!r}, amplitude={amplitude!r}."
        )
    import torch

    from fedsc.methods import dp_sgd
    from fedsc.methods.vae import INIT, VAE, VAEConfig, derive_generator, torch_threads

    run_seed = _rng_seed(seed)
    rng = np.random.default_rng(run_seed)
    m, n0 = int(n_canaries), int(n_cells)
    included = rng.random(m) < 0.5
    genes = m + int(n_genes)
    # rows: n0 ordinary cells, m canaries, m substitutes (ordinary-looking cells)
    x_np = np.zeros((n0 + 2 * m, genes), dtype=np.float32)
    x_np[:n0, m:] = np.abs(rng.normal(size=(n0, int(n_genes))))
    x_np[n0 + np.arange(m), np.arange(m)] = amplitude
    x_np[n0 + m :, m:] = np.abs(rng.normal(size=(m, int(n_genes))))
    x = torch.from_numpy(x_np)
    canaries = x[n0 : n0 + m]
    replace_one = getattr(dp, "relation", "add_or_remove_one") == "replace_one"
    slots = np.arange(m)
    if replace_one:
        # n is public under replace-one: an excluded canary's slot holds its substitute
        kept = np.where(included, n0 + slots, n0 + m + slots)
    else:  # add-or-remove-one: an excluded canary is absent
        kept = n0 + slots[included]
    train_idx = torch.cat([torch.arange(n0), torch.from_numpy(kept)])
    n_train = len(train_idx)
    batch_size = n_train if batch_size is None else int(batch_size)
    dp = dp_sgd.resolve_for_clients(dp, [n_train], batch_size, int(local_epochs), rounds)
    config = VAEConfig(hidden=tuple(hidden), latent=2, dropout=0.0, batch_size=batch_size, lr=lr)
    model = dp_sgd.to_dp_variant(VAE(genes, config, derive_generator(run_seed, INIT)))
    with torch.no_grad():
        # Posterior std e^-5: the reparameterisation noise then barely turns a canary's
        # gradient, so its direction is the same at every step (any initial model is
        # covered by the guarantee; the auditor picks one that makes canaries loud).
        model.logvar.bias.fill_(-10.0)
    first = _first_weight(model)  # (hidden, genes): column j is canary j's
    # With a published seed the attacker replays on the same number of cells with every
    # canary gene zeroed: its canary columns move by the noise alone.
    x_null = x.clone()
    x_null[:, :m] = 0.0

    def signals() -> tuple[np.ndarray, np.ndarray]:
        # Each canary's own per-cell gradient at the current state (eval mode: z = μ),
        # as DP-SGD would clip it: the unit direction d_j it moves column j along (minus
        # the gradient: SGD) and the length mu_j of that move per step it is sampled in.
        model.eval()
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(p: dict[str, Any], cell: Any) -> Any:
            recon, mu, logvar = torch.func.functional_call(model, p, (cell[None],))
            return dp_sgd.per_cell_loss(
                recon, cell[None], mu, logvar, config.kl_weight, config.batch_size
            ).sum()

        per_cell = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))
        d, mu = np.zeros((m, first.shape[0])), np.zeros(m)
        for lo in range(0, m, 256):  # chunks bound the per-cell gradients' memory
            g = per_cell(params, canaries[lo : lo + 256])
            norm = torch.sqrt(sum(v.flatten(1).pow(2).sum(1) for v in g.values())).double()
            j = torch.arange(lo, lo + len(norm))
            col = -g[first_name][torch.arange(len(norm)), :, j].double()
            length = col.norm(dim=1)
            d[lo : lo + len(norm)] = (col / length.clamp_min(1e-30)[:, None]).numpy()
            mu[lo : lo + len(norm)] = (length * (float(dp.clip) / norm).clamp(max=1.0)).numpy()
        model.train()
        return d, mu

    # Score: the log-likelihood ratio "included" vs "excluded" of the column's movement,
    # Gaussian approximation. In units of lr / B per step, round r moves column j along
    # d_j by s = (times sampled) * mu_j + N(0, (σC)^2 T_r): mean a = q T_r mu_j if
    # included, 0 if excluded, so LLR = (s a - a^2 / 2) / (σC)^2 T_r. σ is the same for
    # every canary, so ranking by sum_r (s a - a^2 / 2) / T_r needs no σ (not even the
    # claimed one): loud canaries are ranked by their movement, quiet ones near zero.
    scores = np.zeros(m)
    claimed = math.inf
    steps = 0
    q = dp_sgd.sampling_rate(n_train, batch_size)
    first_name = next(k for k, v in model.named_parameters() if v is first)
    with torch_threads(1):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        for r in range(int(rounds)):
            d, mu = signals()
            before_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            before = first.detach()[:, :m].double().clone()
            up = dp_sgd.local_train(
                model,
                optimizer,
                x,
                train_idx,
                seed=run_seed,
                client=0,
                round_index=r,
                local_epochs=int(local_epochs),
                dp=dp,
                clipping=clipping,
            )
            move = first.detach()[:, :m].double() - before
            if dp.simulated:
                replay = copy.deepcopy(model)
                replay.load_state_dict(before_state)
                dp_sgd.local_train(
                    replay,
                    torch.optim.SGD(replay.parameters(), lr=lr),
                    x_null,
                    train_idx,
                    seed=run_seed,
                    client=0,
                    round_index=r,
                    local_epochs=int(local_epochs),
                    dp=dp,
                    clipping=clipping,
                )
                noise = _first_weight(replay).detach()[:, :m].double()
                move = move - (noise - before)
            along = np.einsum("hj,jh->j", move.numpy(), d) * batch_size / lr
            expected = q * up.steps * mu
            scores += (along * expected - expected**2 / 2) / up.steps
            claimed = up.epsilon
            steps += up.steps
    found = epsilon_from_scores(scores, included, dp.delta, beta, guess_fractions)
    return _audit_result(
        found,
        dp,
        level="cell",
        observer="output",
        claimed_epsilon=float(claimed),
        beta=beta,
        included=included,
        clip=float(dp.clip),
        steps=int(steps),
        sampling_rate=float(q),
        noise=NOISE_PUBLISHED if dp.simulated else NOISE_FRESH,
        start=start,
        details={
            "rounds": int(rounds),
            "local_epochs": int(local_epochs),
            "batch_size": batch_size,
            "n_train": int(n_train),
            "relation": "replace_one" if replace_one else "add_or_remove_one",
            "genes": int(genes),
            "hidden": list(config.hidden),
            "clipping": clipping,
            "optimizer": f"SGD(lr={lr})",
        },
    )


# -------------------------------------------------------------------------- donor level
def audit_donor_level(
    dp: DPConfig,
    *,
    n_canaries: int,
    n_donors: int = 50,
    cells_per_ordinary_donor: int = 4,
    canary_cells: Sequence[int] = (1, 4, 40),
    n_genes: int = 20,
    rounds: int = 1,
    local_epochs: int = 4,
    hidden: Sequence[int] = (16,),
    amplitude: float = 10.0,
    lr: float = 1e-3,
    seed: int | None = None,
    beta: float = 0.05,
    guess_fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS,
) -> AuditResult:
    """Audit donor-level DP-SGD: canary *donors* through the real ``local_train(donors=)``.

    As :func:`audit_cell_level`, with donors as the canaries. Canary donor j holds
    ``canary_cells[j % len(canary_cells)]`` identical cells expressing only its reserved
    gene j (value ``amplitude``): a donor with many cells is the one per-cell clipping
    would let dominate, so the audit tests the per-donor bound (≤ k cells at C/k) too. One
    client holds ``n_donors`` ordinary donors of ``cells_per_ordinary_donor`` random cells
    and the canaries. Replace-one with D public (``dp.relation``): an excluded canary's
    donor is replaced by a substitute donor of one ordinary cell, so every run has the
    same D. Score of canary j: the movement of column j along the canary's own clipped
    per-cell gradient, weighed as a Gaussian log-likelihood ratio with the expected
    movement q · steps · min(n_j, k) · (clipped length). ``dp.simulated``: the attacker
    replays with the published seed on the data with every canary gene zeroed and
    subtracts the noise. The claim is ``local_train``'s own ε (donor level).
    """
    start = time.perf_counter()
    if dp.level != "donor":
        raise FedscInputError(
            f"audit_donor_level needs a donor-level DPConfig, got level={dp.level!r} "
            "(cell level: audit_cell_level; client level: audit_client_level)."
        )
    _check_canaries(n_canaries)
    sizes = [int(c) for c in canary_cells]
    for name, v in (
        ("n_donors", n_donors),
        ("cells_per_ordinary_donor", cells_per_ordinary_donor),
        ("n_genes", n_genes),
        ("rounds", rounds),
        *((f"canary_cells[{i}]", c) for i, c in enumerate(sizes)),
    ):
        if int(v) != v or v < 1:
            raise FedscInputError(f"audit: {name} must be an integer >= 1, got {v!r}.")
    import torch

    from fedsc.methods import dp_sgd
    from fedsc.methods.vae import INIT, VAE, VAEConfig, derive_generator, torch_threads

    run_seed = _rng_seed(seed)
    rng = np.random.default_rng(run_seed)
    m, d0, c0 = int(n_canaries), int(n_donors), int(cells_per_ordinary_donor)
    included = rng.random(m) < 0.5
    genes = m + int(n_genes)
    n_cells = np.array([sizes[j % len(sizes)] for j in range(m)])
    k = int(dp.cells_per_donor or 1)
    # rows: ordinary donors' cells, then each included canary's cells or its substitute
    blocks, donor_ids = [], []
    ordinary = np.zeros((d0 * c0, genes), dtype=np.float32)
    ordinary[:, m:] = np.abs(rng.normal(size=(d0 * c0, int(n_genes))))
    blocks.append(ordinary)
    donor_ids.append(np.repeat(np.arange(d0), c0))
    canary_rows = np.zeros((m, genes), dtype=np.float32)
    canary_rows[np.arange(m), np.arange(m)] = amplitude
    for j in range(m):
        if included[j]:
            blocks.append(np.repeat(canary_rows[j : j + 1], n_cells[j], axis=0))
            donor_ids.append(np.full(n_cells[j], d0 + j))
        else:  # replace-one, D public: a substitute donor of one ordinary cell
            sub = np.zeros((1, genes), dtype=np.float32)
            sub[0, m:] = np.abs(rng.normal(size=int(n_genes)))
            blocks.append(sub)
            donor_ids.append(np.array([d0 + j]))
    x = torch.from_numpy(np.concatenate(blocks))
    donors = torch.from_numpy(np.concatenate(donor_ids).astype(np.int64))
    train_idx = torch.arange(len(x))
    canaries = torch.from_numpy(canary_rows)
    dp = dp_sgd.resolve_for_donors(dp, [d0 + m], int(local_epochs), int(rounds))
    config = VAEConfig(hidden=tuple(hidden), latent=2, dropout=0.0, batch_size=k, lr=lr)
    model = dp_sgd.to_dp_variant(VAE(genes, config, derive_generator(run_seed, INIT)))
    with torch.no_grad():
        model.logvar.bias.fill_(-10.0)  # as in audit_cell_level: a steady gradient direction
    first = _first_weight(model)
    first_name = next(name for name, v in model.named_parameters() if v is first)
    x_null = x.clone()
    x_null[:, :m] = 0.0
    per_cell_clip = float(dp.clip) / k

    def signals() -> tuple[np.ndarray, np.ndarray]:
        # each canary cell's gradient at the current state, clipped to C/k as DP-SGD does
        model.eval()
        params = {name: v.detach() for name, v in model.named_parameters()}

        def loss(p: dict[str, Any], cell: Any) -> Any:
            recon, mu, logvar = torch.func.functional_call(model, p, (cell[None],))
            return dp_sgd.per_cell_loss(recon, cell[None], mu, logvar, config.kl_weight, k).sum()

        per_cell = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))
        d, mu = np.zeros((m, first.shape[0])), np.zeros(m)
        for lo in range(0, m, 256):
            g = per_cell(params, canaries[lo : lo + 256])
            norm = torch.sqrt(sum(v.flatten(1).pow(2).sum(1) for v in g.values())).double()
            j = torch.arange(lo, lo + len(norm))
            col = -g[first_name][torch.arange(len(norm)), :, j].double()
            length = col.norm(dim=1)
            d[lo : lo + len(norm)] = (col / length.clamp_min(1e-30)[:, None]).numpy()
            mu[lo : lo + len(norm)] = (length * (per_cell_clip / norm).clamp(max=1.0)).numpy()
        model.train()
        return d, mu

    q = float(dp.donor_sampling_rate or 1.0)
    scale = q * (d0 + m) * k  # the public normalisation of the summed gradient
    loud = np.minimum(n_cells, k)  # cells a sampled canary donor gives a step
    scores = np.zeros(m)
    claimed = math.inf
    steps = 0
    with torch_threads(1):
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        for r in range(int(rounds)):
            d, mu = signals()
            before_state = {name: v.detach().clone() for name, v in model.state_dict().items()}
            before = first.detach()[:, :m].double().clone()
            common: dict[str, Any] = {
                "seed": run_seed,
                "client": 0,
                "round_index": r,
                "local_epochs": int(local_epochs),
                "dp": dp,
                "donors": donors,
            }
            up = dp_sgd.local_train(model, optimizer, x, train_idx, **common)
            move = first.detach()[:, :m].double() - before
            if dp.simulated:
                replay = copy.deepcopy(model)
                replay.load_state_dict(before_state)
                opt = torch.optim.SGD(replay.parameters(), lr=lr)
                dp_sgd.local_train(replay, opt, x_null, train_idx, **common)
                move = move - (_first_weight(replay).detach()[:, :m].double() - before)
            along = np.einsum("hj,jh->j", move.numpy(), d) * scale / lr
            expected = q * up.steps * loud * mu
            scores += (along * expected - expected**2 / 2) / up.steps
            claimed = up.epsilon
            steps += up.steps
    found = epsilon_from_scores(scores, included, dp.delta, beta, guess_fractions)
    return _audit_result(
        found,
        dp,
        level="donor",
        observer="output",
        claimed_epsilon=float(claimed),
        beta=beta,
        included=included,
        clip=float(dp.clip),
        steps=int(steps),
        sampling_rate=q,
        noise=NOISE_PUBLISHED if dp.simulated else NOISE_FRESH,
        start=start,
        details={
            "rounds": int(rounds),
            "local_epochs": int(local_epochs),
            "n_donors": d0 + m,
            "cells_per_donor": k,
            "canary_cells": sizes,
            "relation": "replace_one",
            "genes": int(genes),
            "hidden": list(config.hidden),
            "optimizer": f"SGD(lr={lr})",
        },
    )
