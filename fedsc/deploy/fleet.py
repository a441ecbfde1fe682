"""The coordinator's side of the network: the sites it reaches through Flower's Grid.

:class:`Fleet` sends a step to sites and collects their answers with a short polling
interval (Flower's ``Grid.send_and_receive`` sleeps 3 s between polls, which dominates a
run of many short exchanges), names the site in every error, and logs every message the
ServerApp receives (:class:`MessageLog`) so tests can inspect what the coordinator held.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict

from fedsc.deploy import records, trace
from fedsc.deploy.polling import Backoff
from fedsc.deploy.records import arrays_of, content, params_of

#: Flower message type of fedsc's plain requests (SecAgg+ uses "train").
QUERY = "query"


class DeploymentError(RuntimeError):
    """A site failed, did not answer in time, or the sites disagree."""


@dataclass
class MessageLog:
    """Every message content the ServerApp received, in order (for inspection).

    With ``directory`` set, each one is also written there as ``<n>.npz`` (its arrays and
    byte strings) plus ``<n>.json`` (its scalars), so another process can inspect them.
    """

    directory: Path | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, site: str, step: str, record: RecordDict) -> None:
        """Log one received content (every array, config value and metric)."""
        arrays: dict[str, np.ndarray] = {}
        scalars: dict[str, Any] = {}
        for rname, arec in record.array_records.items():
            if rname == records.ARRAYS:  # fedsc's packed arrays: log each one
                for key, unpacked in records.arrays_of(record).items():
                    arrays[f"{rname}/{key}"] = unpacked
                continue
            for key, arr in arec.items():
                arrays[f"{rname}/{key}"] = np.asarray(arr.numpy())
        for rname, crec in list(record.config_records.items()) + list(
            record.metric_records.items()
        ):
            for key, value in crec.items():
                values = value if isinstance(value, list) else [value]
                for j, v in enumerate(values):
                    name = f"{rname}/{key}/{j}"
                    if isinstance(v, bytes):
                        arrays[name] = np.frombuffer(v, dtype=np.uint8).copy()
                    else:
                        scalars[name] = v
        entry = {
            "site": site,
            "step": step,
            "arrays": arrays,
            "scalars": scalars,
            "time": time.time(),
        }
        self.entries.append(entry)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            n = len(self.entries) - 1
            np.savez(self.directory / f"{n:05d}.npz", **arrays)  # type: ignore[arg-type]
            meta = {"site": site, "step": step, "scalars": scalars, "time": entry["time"]}
            (self.directory / f"{n:05d}.json").write_text(json.dumps(meta, default=str))


def exchange(
    grid: Any,
    messages: list[Message],
    timeout: float | None,
    poll: float,
    pushed: list[str] | None = None,
    step: str = "",
    enough: int | None = None,
) -> list[Message]:
    """Push ``messages`` and pull their replies until all came or ``timeout`` passed.

    Polls after 2 ms, doubling the wait up to ``poll`` s (:class:`~fedsc.deploy.polling.
    Backoff`): short exchanges answer within milliseconds, long ones cost few polls.

    ``pushed``, if given, receives the pushed messages' ids in order; ``step`` names the
    exchange in the trace (:mod:`fedsc.deploy.trace`); with ``enough``, stop once that many
    replies without an error came.
    """
    tracing = trace.enabled()
    if tracing:
        nodes = [m.metadata.dst_node_id for m in messages]
        trace.event("coordinator", "push", step=step, nodes=nodes)
    order = list(grid.push_messages(messages))
    if pushed is not None:
        pushed[:] = order
    ids = set(order)
    backoff = Backoff(cap=poll, idle_cap=poll)
    replies: list[Message] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    while ids:
        got = list(grid.pull_messages(ids))
        if tracing:
            for m in got:
                trace.event("coordinator", "pulled", node=m.metadata.src_node_id)
        replies += got
        ids -= {m.metadata.reply_to_message_id for m in got}
        if enough is not None and sum(not r.has_error() for r in replies) >= enough:
            break
        if not ids or (deadline is not None and time.monotonic() >= deadline):
            break
        backoff.sleep()
    return replies


def _stage(messages: list[Message]) -> str:
    """``secagg+ <stage>`` of a SecAgg+ workflow's messages (for the trace)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if not messages or not messages[0].has_content():
        return "secagg+"
    configs = messages[0].content.config_records.get(RECORD_KEY_CONFIGS)
    stage = configs.get("stage") if configs else None
    return f"secagg+ {stage if isinstance(stage, str) else 'fit'}"


class FastGrid:
    """A Grid whose ``send_and_receive`` polls every ``poll`` s and logs the replies.

    For Flower's own workflows (SecAgg+), which call ``grid.send_and_receive``.
    """

    def __init__(self, grid: Any, fleet: Fleet) -> None:
        self._grid = grid
        self._fleet = fleet

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's ``Grid.send_and_receive`` with fast polling and the message log."""
        msgs = list(messages)
        limit = self._fleet.timeout if timeout is None else timeout
        replies = exchange(self._grid, msgs, limit, self._fleet.poll, step=_stage(msgs))
        for reply in replies:
            site = self._fleet.site_of(reply.metadata.src_node_id)
            if reply.has_error():
                self._fleet.errors.append((site, str(reply.error.reason)))
            elif reply.has_content():
                self._fleet.log.add(site, "secagg+", reply.content)
        return replies


class Fleet:
    """The sites of a run, as the coordinator reaches them.

    Parameters
    ----------
    grid
        The ServerApp's Flower ``Grid``.
    n_sites
        How many sites (SuperNodes) the run waits for.
    timeout
        Seconds a site may take per step before the run stops naming it.
    poll
        Seconds between polls for replies.
    log
        Where received messages are logged.
    """

    def __init__(
        self,
        grid: Any,
        n_sites: int,
        *,
        timeout: float = 600.0,
        poll: float = 0.05,
        log: MessageLog | None = None,
    ) -> None:
        self.grid = grid
        self.n_sites = int(n_sites)
        self.timeout = float(timeout)
        self.poll = float(poll)
        self.log = log or MessageLog()
        self.nodes: dict[str, int] = {}
        self.hello: dict[str, dict[str, Any]] = {}
        #: (site, reason) of every error reply a Flower workflow received.
        self.errors: list[tuple[str, str]] = []
        #: Sites that dropped out of a dropout-tolerant protocol (SecAgg+); later steps
        #: skip them (:meth:`live`).
        self.dropped: list[str] = []

    def live(self, sites: list[str]) -> list[str]:
        """``sites`` without the ones that dropped out."""
        return [s for s in sites if s not in self.dropped]

    def site_of(self, node_id: int) -> str:
        """The site name of a node (its node id until it said hello)."""
        for name, nid in self.nodes.items():
            if nid == node_id:
                return name
        return f"node {node_id}"

    def connect(self, params: Mapping[str, Any], wait: float = 120.0) -> dict[str, dict]:
        """Wait for ``n_sites`` nodes, ask each for its public facts; map names to nodes."""
        deadline = time.monotonic() + wait
        nodes: list[int] = []
        while time.monotonic() < deadline:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.n_sites:
                break
            time.sleep(self.poll)
        if len(nodes) < self.n_sites:
            raise DeploymentError(
                f"only {len(nodes)} of {self.n_sites} sites connected within {wait:.0f} s; "
                "start every site's SuperNode (fedsc deploy local, or flower-supernode)."
            )
        if len(nodes) > self.n_sites:
            answers = self._hello_first(nodes, params)
        else:
            answers = self._ask_nodes({n: ("hello", dict(params), None) for n in nodes})
        for node, reply in answers.items():
            info = params_of(reply)["public"]
            name = str(info["site"])
            if name in self.nodes:
                raise DeploymentError(
                    f"two SuperNodes call themselves site {name!r}; give each site a unique "
                    "name (--node-config site=...) or its own batch file."
                )
            self.nodes[name] = node
            self.hello[name] = info
        return self.hello

    def _hello_first(self, nodes: list[int], params: Mapping[str, Any]) -> dict[int, RecordDict]:
        """Hello to more nodes than sites: the first ``n_sites`` that answer, by node id.

        A site whose SuperNode restarted leaves its old node registered at the SuperLink
        until that node's heartbeats expire (a minute or more); it never answers.
        """
        messages = [
            Message(content({**params, "step": "hello"}), dst_node_id=n, message_type=QUERY)
            for n in nodes
        ]
        pushed: list[str] = []
        replies = exchange(
            self.grid, messages, self.timeout, self.poll, pushed, "hello", enough=self.n_sites
        )
        sent = dict(zip(pushed, nodes, strict=True))
        answered = {
            sent[r.metadata.reply_to_message_id]: r.content
            for r in replies
            if not r.has_error() and r.metadata.reply_to_message_id in sent
        }
        if len(answered) < self.n_sites:
            raise DeploymentError(
                f"only {len(answered)} of {len(nodes)} connected nodes answered hello within "
                f"{self.timeout:.0f} s; {self.n_sites} sites are needed."
            )
        for node in sorted(answered)[: self.n_sites]:
            self.log.add(self.site_of(node), "hello", answered[node])
            refused = params_of(answered[node]).get("error")
            if refused is not None:
                raise DeploymentError(f"{self.site_of(node)} refused step 'hello': {refused}")
        return {node: answered[node] for node in sorted(answered)[: self.n_sites]}

    def ask(
        self, requests: Mapping[str, tuple[str, Mapping[str, Any], Mapping[str, Any] | None]]
    ) -> dict[str, RecordDict]:
        """Run ``{site: (step, params, arrays)}``; the replies by site, in request order."""
        unknown = sorted(set(requests) - set(self.nodes))
        if unknown:
            raise DeploymentError(
                f"no connected site named {unknown}; sites: {sorted(self.nodes)}."
            )
        by_node = self._ask_nodes({self.nodes[s]: r for s, r in requests.items()})
        return {s: by_node[self.nodes[s]] for s in requests}

    def _ask_nodes(
        self, requests: Mapping[int, tuple[str, Mapping[str, Any], Mapping[str, Any] | None]]
    ) -> dict[int, RecordDict]:
        messages = [
            Message(
                content({**params, "step": step}, arrays),
                dst_node_id=node,
                message_type=QUERY,
            )
            for node, (step, params, arrays) in requests.items()
        ]
        pushed: list[str] = []
        steps = sorted({step for step, _, _ in requests.values()})
        replies = exchange(self.grid, messages, self.timeout, self.poll, pushed, ",".join(steps))
        # match replies by the message they answer: Flower may answer for an unreachable
        # node itself (an error reply whose source is not that node)
        sent = dict(zip(pushed, requests, strict=True))
        out: dict[int, RecordDict] = {}
        for reply in replies:
            node = sent.get(reply.metadata.reply_to_message_id)
            if node is None:
                continue
            site = self.site_of(node)
            step = requests[node][0]
            if reply.has_error():
                raise DeploymentError(
                    f"site {site!r} did not answer step {step!r}: {reply.error.reason}"
                )
            self.log.add(site, step, reply.content)
            params = params_of(reply.content)
            if "error" in params:
                raise DeploymentError(f"site {site!r} refused step {step!r}: {params['error']}")
            out[node] = reply.content
        missing = [self.site_of(n) for n in sent.values() if n not in out]
        if missing:
            raise DeploymentError(
                f"site(s) {missing} did not answer step {requests[next(iter(requests))][0]!r} "
                f"within {self.timeout:.0f} s; check that their SuperNodes are running."
            )
        return out

    def value(self, reply: RecordDict) -> tuple[dict[str, np.ndarray], bool]:
        """The plaintext value in a reply: (named arrays, was one bare array)."""
        return arrays_of(reply), bool(params_of(reply).get("bare"))
