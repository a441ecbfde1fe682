"""The fedsc ClientApp: what runs at a site, on the site's SuperNode.

Node config (``flower-supernode --node-config``): ``data-path`` (the site's h5ad),
``site`` (its name; default the file's only batch), ``out-dir`` (where corrected data are
written; default the data file's folder), and optionally ``worker`` + ``worker-key-file``:
the site's long-lived worker (:mod:`fedsc.deploy.site_worker`), which then runs every step
(this module stays a thin adapter that imports neither torch nor anndata).

Requests of type ``query`` run one site step (:mod:`fedsc.deploy.site`) and answer by the
transport the coordinator names; ``train`` messages are SecAgg+ rounds, handled by
Flower's ``secaggplus_mod`` around :func:`train`.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from fedsc.deploy.records import (
    OWNED_PREFIX,
    OWNER_PREFIX,
    arrays_of,
    content,
    from_array_record,
    params_of,
    to_array_record,
)
from fedsc.errors import FedscInputError


def trace_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower mod: trace when this task's handling starts and ends (:mod:`fedsc.deploy.trace`)."""
    from fedsc.deploy import trace

    trace.event("clientapp", "handler_start")
    reply = call_next(msg, context)
    trace.event("clientapp", "handler_end")
    return reply


app = ClientApp(mods=[trace_mod, secaggplus_mod])

_STATE_PREFIX = "fedsc:"
#: Config key of fedsc's request inside a SecAgg+ FitIns.
REQUEST = "fedsc"


def run_step(
    context: Context, step: str, params: dict[str, Any], arrays: dict[str, Any]
) -> tuple[str, Any]:
    """Run a step at this site: ``("public", json)`` or ``("value", (arrays, bare))``."""
    cfg = context.node_config
    if cfg.get("worker"):
        from fedsc.deploy.site_worker import call

        key = Path(str(cfg["worker-key-file"])).read_bytes()
        kind, payload = call(str(cfg["worker"]), key, step, params, arrays)
        if kind == "error":
            raise RuntimeError(payload)
        return kind, payload
    # no worker: run the step in this process, keeping the run state in the context
    from fedsc.deploy.site import Site
    from fedsc.deploy.site_worker import answer

    if "data-path" not in cfg:
        raise FedscInputError(
            "this SuperNode has no data: start it with --node-config "
            "'data-path=\"/path/to/site.h5ad\"' (or use `fedsc deploy site`)."
        )
    data = Path(str(cfg["data-path"]))
    site = Site(
        data,
        name=str(cfg["site"]) if cfg.get("site") else None,
        out_dir=Path(str(cfg.get("out-dir") or data.parent)),
    )
    for key_, record in context.state.array_records.items():
        if key_.startswith(_STATE_PREFIX):
            site.state[key_[len(_STATE_PREFIX) :]] = from_array_record(record)
    reply = answer(site, step, params, arrays)
    for key_, values in site.state.items():
        context.state.array_records[_STATE_PREFIX + key_] = to_array_record(values)
    return reply


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Run one step; answer public facts, or the value through the named transport."""
    params = params_of(msg.content)
    step = str(params.get("step"))
    try:
        arrays = open_owner_delivery(context.node_config, params, arrays_of(msg.content))
        kind, payload = run_step(context, step, params, arrays)
        if kind == "public":
            return Message(content({"public": payload}), reply_to=msg)
        transport = params.get("transport")
        if transport == "plaintext":
            arrays, bare = payload
            return Message(content({"bare": bare}, arrays), reply_to=msg)
        if transport == "crypten":
            meta, sealed_arrays = seal_for_parties(context, params, *payload)
            return Message(content({"meta": meta}, sealed_arrays), reply_to=msg)
        raise FedscInputError(f"unknown transport {transport!r} for step {step!r}.")
    except Exception as err:  # reported to the coordinator, which names this site
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        return Message(content({"error": detail}), reply_to=msg)


def seal_for_parties(
    context: Context, params: dict[str, Any], arrays: dict[str, np.ndarray], bare: bool
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Secret-share this site's value and seal share i for party i (the coordinator relays).

    Keys: node config ``party-keys``, a file with one hex key per party (this site's key
    at that party, from the party operators). Values are flattened in sorted key order
    (as ``smpc.flatten``); the structure (keys, dtypes, shapes) is public.
    """
    from smpc import sealed, sharing

    cfg = context.node_config
    keys = party_keys(cfg, int(params["parties"]))
    order = sorted(arrays)
    flat = np.concatenate([np.asarray(arrays[k], dtype=np.float64).ravel() for k in order])
    weight = params.get("weight")
    scale = 1.0 if weight is None else float(weight)
    n_sites = len(json.loads(str(params["context"]))["clients"])
    bound = sharing.ring_bound(n_sites, int(params["bits"]))
    top = float(np.max(np.abs(flat * scale))) if flat.size else 0.0
    if not np.isfinite(top) or top > bound or (weight is not None and abs(scale) > bound):
        raise FedscInputError(
            f"values up to {top:.6g} exceed what {n_sites} sites can sum in the parties' ring "
            f"(|x| <= {bound:.6g} at {params['bits']} fractional bits)."
        )
    name = str(cfg.get("site") or params.get("site_name"))
    blobs = sealed.seal_shares(
        flat,
        keys,
        client=name,
        context=str(params["context"]),
        precision_bits=int(params["bits"]),
        scale=scale,
        extra=None if weight is None else scale,
    )
    meta = {
        "keys": order,
        "dtypes": [str(np.asarray(arrays[k]).dtype) for k in order],
        "shapes": [list(np.shape(arrays[k])) for k in order],
        "bare": bare,
    }
    return meta, {f"sealed/{i}": np.frombuffer(b, dtype=np.uint8) for i, b in enumerate(blobs)}


def party_keys(cfg: Any, parties: int | None = None) -> list[bytes]:
    """The site's key at each CrypTen party (node config ``party-keys``: one hex key a line)."""
    if not cfg.get("party-keys"):
        raise FedscInputError(
            "the crypten transport needs this site's party keys: start the SuperNode with "
            "--node-config 'party-keys=\"/path/to/keys\"' (one hex key per party)."
        )
    keys = [bytes.fromhex(line) for line in Path(str(cfg["party-keys"])).read_text().split()]
    if parties is not None and len(keys) != parties:
        raise FedscInputError(f"{len(keys)} party keys for {parties} parties.")
    return keys


def open_owner_delivery(
    cfg: Any, params: dict[str, Any], arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Open the sealed result slices the coordinator relayed to this site (``secure_rows``).

    The parties sealed this site's runs of an owner-revealed mean, and the total weight,
    under the keys they share with it (``smpc.sealed.seal_result``); only this site can
    open them, here in its ClientApp, which holds the party keys (node config
    ``party-keys``). The step gets ``owned/context`` (the operation, bound to every
    slice) and ``owned/<start>``: the weighted sum over the run starting at ``start``
    (the last run is the total weight). Arrays without ``owner/`` keys pass unchanged.
    """
    if not any(k.startswith(OWNER_PREFIX) for k in arrays):
        return arrays
    from smpc import sealed

    keys = party_keys(cfg)
    op_context = np.asarray(arrays[f"{OWNER_PREFIX}context"], np.uint8).tobytes().decode()
    bits = int(np.asarray(arrays[f"{OWNER_PREFIX}bits"]))
    slices = []
    for key, blob in arrays.items():
        parts = key[len(OWNER_PREFIX) :].split("/")
        if key.startswith(OWNER_PREFIX) and len(parts) == 3:
            rank, lo, hi = map(int, parts)
            slices.append((rank, lo, hi, np.asarray(blob, np.uint8).tobytes()))
    name = str(cfg.get("site") or params.get("site_name"))
    opened = sealed.open_owner_slices(keys, slices, op_context, name, bits)
    out = {k: v for k, v in arrays.items() if not k.startswith(OWNER_PREFIX)}
    out[f"{OWNED_PREFIX}context"] = np.frombuffer(op_context.encode(), np.uint8).copy()
    out.update({f"{OWNED_PREFIX}{start}": values for start, values in opened.items()})
    return out


def site_fit(fitins: FitIns, context: Context) -> FitRes:
    """The site's side of one SecAgg+ round: run the requested step, return its value.

    The value's structure (keys, dtypes; public) travels in the FitRes metrics, the arrays
    go to ``secaggplus_mod``, which quantises and masks them. A value outside the public
    bound is refused: clipping it would silently change the aggregate.
    """
    request = json.loads(str(fitins.config[REQUEST]))
    keys = request["array_keys"]
    arrays_in = dict(zip(keys, parameters_to_ndarrays(fitins.parameters), strict=True))
    kind, payload = run_step(context, str(request["step"]), request, arrays_in)
    if kind != "value":
        raise FedscInputError(f"step {request['step']!r} has no value to aggregate.")
    arrays, bare = payload
    if request.get("encode"):
        arrays, bare = {"value": encode(request, arrays, bare)}, True
    bound = float(request["bound"])
    for key, arr in arrays.items():
        top = float(np.max(np.abs(arr))) if arr.size else 0.0
        if not np.isfinite(top) or top > bound:
            raise FedscInputError(
                f"value {key!r} of step {request['step']!r} reaches {top:.6g}, outside the "
                f"SecAgg+ clipping range [-{bound:g}, {bound:g}]; raise secagg-clip (run "
                "config) or use the plaintext transport."
            )
    meta = {
        "keys": list(arrays),
        "dtypes": [str(a.dtype) for a in arrays.values()],
        "shapes": [list(a.shape) for a in arrays.values()],
        "bare": bare,
    }
    # at least 1-d: Flower 1.41's SecAgg+ unmasking skips its offset and weight
    # correction for 0-d arrays (it rebinds a scalar in place of updating it)
    vectors = [np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in arrays.values()]
    params = ndarrays_to_parameters(vectors)
    n_examples = int(request["num_examples"])
    return FitRes(Status(Code.OK, ""), params, n_examples, {REQUEST: json.dumps(meta)})


def encode(request: dict[str, Any], arrays: dict[str, np.ndarray], bare: bool) -> np.ndarray:
    """Encode a count vector for an argmax by sums (see ``DeployedSecAggPlus.argmax``).

    ``histogram``: one-hot of each count over ``0..cap`` (one row per column);
    ``at_max``: 1 at this site's position where its count equals the announced maximum.
    """
    counts = np.asarray(arrays["value"]) if bare else None
    if counts is None or counts.ndim != 1 or not np.array_equal(counts, np.rint(counts)):
        raise FedscInputError("an argmax by sums needs one vector of integer counts per site.")
    counts = np.rint(counts).astype(np.int64)
    if request["encode"] == "histogram":
        cap = int(request["cap"])
        if counts.min(initial=0) < 0 or counts.max(initial=0) > cap:
            raise FedscInputError(f"counts must lie in [0, {cap}], got {counts.tolist()}.")
        out = np.zeros((counts.size, cap + 1))
        out[np.arange(counts.size), counts] = 1.0
        return out
    if request["encode"] == "at_max":
        out = np.zeros((counts.size, int(request["n_sites"])))
        out[:, int(request["position"])] = counts == np.asarray(request["max"])
        return out
    raise FedscInputError(f"unknown encoding {request['encode']!r}.")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One SecAgg+ round's value (Flower's ``secaggplus_mod`` masks what this returns)."""
    import flwr.compat.common.recorddict_compat as compat

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    fitres = site_fit(fitins, context)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
