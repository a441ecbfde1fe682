"""SecAgg+ in deployment: Flower's own protocol for sums and weighted means.

Each aggregation is one run of Flower's :class:`~flwr.server.workflow.SecAggPlusWorkflow`
(setup, key sharing, masked vectors, unmasking): the sites compute their value inside
the round (the ClientApp's ``train`` handler, wrapped by Flower's ``secaggplus_mod``),
quantise and mask it; the coordinator only learns the sum of the sites that finished.

Numbers. Values are clipped to ``[-B, B]`` (B: the request's public ``bound``, else the
aggregator's ``clipping_range``; a site refuses values outside it rather than clip them)
and stochastically quantised to ``Q`` levels, ``Q`` the largest power of two with
``(n + 1) Q <= 2^32``; the error of a weighted mean is at most ``2B/Q`` per value (a sum's
``n`` times that), e.g. 1.2e-7 for B = 64, three sites. Weights must be integers (cell
counts): SecAgg+ carries them as ``num_examples``.

Dropouts: a site that stops answering during a round is left out (Flower recovers its
masks from its neighbours' shares); the result is the aggregate of the survivors, and
the ledger entry lists only the survivors. A site that *fails* (raises) stops the run with
its error. The argmax (FedscGen's dominant client) is not a sum; :meth:`DeployedSecAggPlus.argmax` computes it from two
SecAgg+ sums and reveals more than the CrypTen parties would (see there).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as FlowerStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from fedsc.deploy.aggregators import SecureSiteAggregator
from fedsc.deploy.client_app import REQUEST
from fedsc.deploy.fleet import DeploymentError, FastGrid, Fleet
from fedsc.deploy.remote import RemoteValue
from fedsc.errors import FedscInputError
from smpc.ledger import Traffic

log = logging.getLogger(__name__)

#: SecAgg+ modulus (Flower's default and maximum).
MODULUS = 1 << 32


def quantization_range(n_sites: int) -> int:
    """The largest power of two Q with (n + 1) Q <= 2^32 (no overflow of the masked sum)."""
    return 1 << math.floor(math.log2(MODULUS / (n_sites + 1)))


class _OneRound(FlowerStrategy):
    """A Flower strategy that configures one SecAgg+ round and keeps its aggregate."""

    def __init__(self, fitins: dict[int, FitIns], proxies: dict[int, GridClientProxy]) -> None:
        self.fitins = fitins
        self.proxies = proxies
        self.aggregate: list[np.ndarray] | None = None
        self.meta: dict[str, Any] = {}
        self.n_results = 0
        self.results_from: list[int] = []

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        return [(self.proxies[n], ins) for n, ins in self.fitins.items()]

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        self.n_results = len(results)
        self.results_from = [proxy.node_id for proxy, _ in results]
        if results:
            self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
            self.meta = json.loads(str(results[0][1].metrics[REQUEST]))
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> Any:
        return []

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> Any:
        return None


class DeployedSecAggPlus(SecureSiteAggregator):
    """Sums and weighted means over the sites by Flower's SecAgg+ (private).

    Parameters
    ----------
    fleet
        The connected sites.
    clipping_range
        Default bound B on every value (requests may name their own ``bound``).
    reconstruction_threshold
        Fraction of a site's neighbours whose shares recover its masks (SecAgg+).
    timeout
        Seconds per SecAgg+ stage; a site silent that long is treated as dropped.
    """

    name = "secagg+"

    def __init__(
        self,
        fleet: Fleet,
        *,
        clipping_range: float = 64.0,
        reconstruction_threshold: float = 0.67,
        timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.fleet = fleet
        self.clipping_range = float(clipping_range)
        self.reconstruction_threshold = float(reconstruction_threshold)
        self.timeout = fleet.timeout if timeout is None else float(timeout)
        self.rounds = 0

    @property
    def privacy_note(self) -> str:
        """What SecAgg+ hides."""
        return (
            "private (SecAgg+): the coordinator learns only sums / weighted means of the "
            "sites that finished each round; values are quantised (docs/deployment.md)"
        )

    # ---------------------------------------------------------------- public API
    def weighted_mean(
        self, contributions: Sequence[Any], weights: Sequence[float], *, reference: Any = None
    ) -> Any:
        """Weighted mean of the sites' values (integer weights, e.g. cell counts)."""
        self._check_open()
        refs = self._refs(contributions)
        w = self._checked_weights(weights, len(refs))
        ints = np.rint(w)
        if not np.array_equal(ints, w):
            raise FedscInputError(
                f"SecAgg+ carries weights as integer example counts; got {w.tolist()}. Use "
                "cell counts as weights, or the plaintext/crypten transports."
            )
        return self._run("weighted_mean", refs, [int(x) for x in ints])

    def weighted_mean_to_owners(
        self,
        contributions: Sequence[Any],
        weights: Sequence[float],
        owners: Sequence[Any],
        deliver: Any,
    ) -> float:
        """Refused: SecAgg+ cannot reveal a row to its owner only (``secure_rows``)."""
        raise FedscInputError(
            "secure_rows (owner-revealed means) cannot run over SecAgg+: the coordinator is "
            "the party that unmasks SecAgg+'s sum, so it would see every row it sends a "
            "site. Use the crypten transport, or secure_rows=False."
        )

    def sum(self, contributions: Sequence[Any], *, reference: Any = None) -> Any:
        """Element-wise sum of the sites' values."""
        self._check_open()
        refs = self._refs(contributions)
        return self._run("sum", refs, [1] * len(refs))

    def argmax(self, columns: Sequence[Any]) -> np.ndarray:
        """Per column, the site with the largest count (ties: lowest index), by two sums.

        SecAgg+ only sums, so the argmax of counts is computed from (1) the sum of each
        site's one-hot encoding of its counts (a histogram per column: reveals the
        multiset of counts per column, not which site has which), whose highest non-empty
        bin is the maximum M, and (2) the sum of each site's indicator "my count equals
        M" at its own position (reveals which sites tie at the maximum). This reveals more
        than the CrypTen parties' argmax (the winner only); docs/deployment.md says so.
        Counts must be integers in ``[0, n]``, n the largest site's cell count (public).
        """
        self._check_open()
        refs = self._refs(columns)
        cap = int(max(int(h["n_obs"]) for h in self.fleet.hello.values()))
        histogram = [
            replace(r, params={**r.params, "encode": "histogram", "cap": cap, "bound": 1.0})
            for r in refs
        ]
        hist = np.rint(np.asarray(self._run("sum", histogram, [1] * len(refs))))
        if hist.ndim != 2 or (hist.sum(axis=1) < 1).any():
            raise DeploymentError("SecAgg+ argmax: a column has no counts; every site must report.")
        maxima = [int(np.flatnonzero(row > 0)[-1]) for row in hist]
        indicators = [
            replace(
                r,
                params={
                    **r.params,
                    "encode": "at_max",
                    "max": maxima,
                    "position": pos,
                    "order": [x.site for x in refs],
                    "n_sites": len(refs),
                    "bound": 1.0,
                },
            )
            for pos, r in enumerate(refs)
        ]
        ties = np.rint(np.asarray(self._run("sum", indicators, [1] * len(refs))))
        winners = []
        for j, row in enumerate(ties):
            at_max = np.flatnonzero(row > 0)
            if not len(at_max):
                raise DeploymentError(
                    f"SecAgg+ argmax: no site reported the maximum of column {j} (a site "
                    "dropped out between the two sums); rerun the step."
                )
            winners.append(int(at_max[0]))
        return np.asarray(winners, dtype=np.int64)

    # ---------------------------------------------------------------- internals
    def _run(self, op: str, refs: list[RemoteValue], examples: list[int]) -> Any:
        import time

        start = time.perf_counter()
        fleet = self.fleet
        # sites that dropped out earlier are left out (no waiting for them again)
        kept = [i for i, r in enumerate(refs) if r.site not in fleet.dropped]
        refs, examples = [refs[i] for i in kept], [examples[i] for i in kept]
        if len(refs) < 2:
            raise DeploymentError(
                f"SecAgg+ needs at least two live sites; left: {[r.site for r in refs]} "
                f"(dropped: {fleet.dropped})."
            )
        nodes = [fleet.nodes[r.site] for r in refs]
        # a request's bound is the least range its values need (e.g. a step counter)
        bound = max([self.clipping_range] + [float(r.params.get("bound", 0.0)) for r in refs])
        q_range = quantization_range(len(refs))
        max_weight = float(max(examples))
        fitins = {}
        for node, ref, n_ex in zip(nodes, refs, examples, strict=True):
            arrays = dict(ref.arrays or {})
            request = {
                **ref.params,
                "step": ref.step,
                "array_keys": list(arrays),
                "num_examples": n_ex,
                "bound": bound,
                # what the site checks before it contributes (fedsc.deploy.site.SiteGuard)
                "transport": "secagg+",
                "op": op,
                "sites": [r.site for r in refs],
                "site_name": ref.site,
            }
            params = ndarrays_to_parameters([_numpy(a) for a in arrays.values()])
            fitins[node] = FitIns(params, {REQUEST: json.dumps(request, default=_json)})
        grid = FastGrid(fleet.grid, fleet)
        proxies = {n: GridClientProxy(n, grid, 0) for n in nodes}  # type: ignore[arg-type]
        strategy = _OneRound(fitins, proxies)
        self.rounds += 1
        state = RecordDict()
        state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: self.rounds})
        state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        context = LegacyContext(Context(0, 0, {}, state, {}), strategy=strategy)
        before = len(fleet.errors)
        workflow = SecAggPlusWorkflow(
            num_shares=1.0,
            reconstruction_threshold=self.reconstruction_threshold,
            max_weight=max_weight,
            clipping_range=bound,
            quantization_range=q_range,
            modulus_range=MODULUS,
            timeout=self.timeout,
        )
        workflow(grid, context)  # type: ignore[arg-type]
        self._raise_site_errors(before)
        if strategy.aggregate is None:
            raise DeploymentError(
                f"SecAgg+ {op} did not finish: too few sites answered "
                f"({strategy.n_results} of {len(refs)}); see the ServerApp log."
            )
        survivors = set(strategy.results_from)
        dropped = [r.site for r, n in zip(refs, nodes, strict=True) if n not in survivors]
        if dropped:
            log.warning("SecAgg+ %s: site(s) %s dropped out; aggregated the others.", op, dropped)
            fleet.dropped += dropped
        scale = float(len(survivors)) if op == "sum" else 1.0  # the workflow returns means
        aggregate = [np.asarray(a, dtype=np.float64) * scale for a in strategy.aggregate]
        n_values = int(sum(a.size for a in aggregate))
        by_key = sorted(zip(strategy.meta["keys"], aggregate, strict=True), key=lambda t: t[0])
        flat = np.concatenate([np.asarray(a).ravel() for _, a in by_key])
        value = self._rebuild(refs[0], strategy.meta, flat)
        traffic = Traffic(
            coordinator_received={fleet.site_of(n): [int(n_values)] for n in strategy.results_from},
            coordinator_bytes=int(len(survivors) * n_values * 4),
        )
        self._record(
            op,
            np.broadcast_to(0.0, (len(survivors), n_values)),
            traffic,
            time.perf_counter() - start,
        )
        return value

    def _raise_site_errors(self, since: int) -> None:
        """A site that raised (not one that dropped out) stops the run with its message."""
        for site, reason in self.fleet.errors[since:]:
            raise DeploymentError(f"site {site!r} failed during SecAgg+: {reason}")


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")
