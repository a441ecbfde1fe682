"""Timestamps of a deployed run's exchanges, for finding where its wall time goes.

Off unless ``$FEDSC_DEPLOY_TRACE`` names a folder: then every process of a local
deployment (the ServerApp, each SuperNode, SuperExec, forked ClientApp and site worker)
appends one JSON line per event to ``<folder>/<role>-<pid>.jsonl``; :func:`breakdown`
reads them back and splits each exchange into its legs (``benchmarks/bench_deployment.py``
prints the table). Hand-written: Flower 1.41 traces to OpenTelemetry only when an
exporter is configured, and none of its spans cover the SuperNode's poll waits.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

#: Environment variable naming the trace folder.
TRACE_ENV = "FEDSC_DEPLOY_TRACE"
#: Environment variable naming the site of a site-side process (set per SuperNode and
#: worker by :class:`fedsc.deploy.local.LocalDeployment`); its events carry it.
SITE_ENV = "FEDSC_DEPLOY_TRACE_SITE"


def enabled() -> bool:
    """Whether this process traces (``$FEDSC_DEPLOY_TRACE`` is set)."""
    return bool(os.environ.get(TRACE_ENV))


def event(role: str, name: str, **fields: Any) -> None:
    """Append ``{t, role, name, **fields}`` to this process's trace file (if tracing)."""
    folder = os.environ.get(TRACE_ENV)
    if not folder:
        return
    site = os.environ.get(SITE_ENV)
    if site is not None:
        fields.setdefault("site", site)
    line = json.dumps({"t": time.time(), "role": role, "name": name, **fields}, default=str)
    path = Path(folder) / f"{role}-{os.getpid()}.jsonl"
    with open(path, "a") as f:
        f.write(line + "\n")


def read(folder: str | Path) -> list[dict[str, Any]]:
    """Every event in ``folder``, in time order."""
    events = []
    for path in Path(folder).glob("*.jsonl"):
        events += [json.loads(line) for line in path.read_text().splitlines() if line]
    return sorted(events, key=lambda e: e["t"])


#: The legs of one exchange, in order: (name, event that ends it).
LEGS = (
    ("coordinator push -> SuperNode has it", "node_received"),
    ("SuperNode -> SuperExec launches ClientApp", "launch"),
    ("fork of the ClientApp process", "task_start"),
    ("ClientApp pulls input, FAB, loads app", "handler_start"),
    ("site step (worker) + ClientApp work", "handler_end"),
    ("ClientApp push -> SuperNode sent reply", "node_sent"),
    ("SuperLink -> coordinator pulled reply", "pulled"),
)


def breakdown(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Per exchange (one coordinator push to the sites it asks), the time of each leg.

    A site handles one message at a time, so its events are matched to the pushes in
    order; the coordinator names nodes, the SuperNodes map node ids to sites. Returns
    ``{"exchanges": n, "legs": {leg: seconds summed over exchanges, each exchange's leg
    the mean over its sites}, "per_step": {step: exchanges}, "total": first push to
    last pull, "rows": [(step, [seconds of each leg])] per exchange, "around": the run's
    time outside its exchanges (submission, the ServerApp's start and end), when traced}``.
    """
    site_of = {
        int(e["node"]): str(e["site"])
        for e in events
        if e["role"] == "supernode" and "node" in e and "site" in e
    }
    by_site: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    pushes = []
    for e in events:
        if e["role"] == "coordinator" and e["name"] == "push":
            pushes.append(e)
        elif e["role"] == "coordinator" and e["name"] == "pulled":
            by_site[site_of.get(int(e["node"]), "?")]["pulled"].append(e)
        elif "site" in e:
            by_site[str(e["site"])][e["name"]].append(e)
    legs = {leg: 0.0 for leg, _ in LEGS}
    rows: list[tuple[str, list[float]]] = []
    steps: dict[str, int] = defaultdict(int)
    cursor: dict[str, int] = defaultdict(int)
    for push in pushes:
        steps[str(push.get("step"))] += 1
        sums = {leg: 0.0 for leg, _ in LEGS}
        n = 0
        for node in push.get("nodes", []):
            site = site_of.get(int(node), "?")
            k = cursor[site]
            cursor[site] += 1
            chain: list[dict[str, Any] | None] = [push]
            for _, end in LEGS:
                items = by_site[site][end]
                chain.append(items[k] if k < len(items) else None)
            if any(c is None for c in chain):
                continue
            n += 1
            for i, (leg, _) in enumerate(LEGS):
                sums[leg] += max(0.0, chain[i + 1]["t"] - chain[i]["t"])  # type: ignore[index]
        for leg in legs:
            legs[leg] += sums[leg] / max(n, 1)
        rows.append((str(push.get("step")), [sums[leg] / max(n, 1) for leg, _ in LEGS]))
    pulls = [e["t"] for e in events if e["role"] == "coordinator" and e["name"] == "pulled"]
    total = (max(pulls) - pushes[0]["t"]) if pushes and pulls else 0.0
    # the run outside its exchanges: the first push and the last reply bound the exchanges
    first = {e["name"]: e["t"] for e in reversed(events)}
    last = {e["name"]: e["t"] for e in events}
    # the ServerApp's task: the coordinator side's launch and fork (they name no site)
    server = {e["name"]: e["t"] for e in reversed(events) if "site" not in e}
    marks = [
        ("submit (StartRun) -> ServerApp launched", first.get("submit"), server.get("launch")),
        ("ServerApp fork", server.get("launch"), server.get("task_start")),
        (
            "ServerApp pulls input, FAB, loads app",
            server.get("task_start"),
            first.get("serverapp_start"),
        ),
        ("ServerApp start -> first push", first.get("serverapp_start"), first.get("push")),
        (
            "last reply -> ServerApp wrote its outputs",
            last.get("pulled"),
            last.get("serverapp_end"),
        ),
        ("ServerApp end -> run() returned", last.get("serverapp_end"), last.get("returned")),
    ]
    around = {
        label: max(0.0, end - begin)
        for label, begin, end in marks
        if begin is not None and end is not None
    }
    return {
        "exchanges": len(pushes),
        "legs": legs,
        "per_step": dict(steps),
        "rows": rows,
        "total": total,
        "around": around,
    }
