"""The fedsc ClientApp: what runs at a site, on the site's SuperNode.

Node config (``flower-supernode --node-config``): ``data-path`` (the site's h5ad, required),
``site`` (its name; default the file's only batch), ``out-dir`` (where corrected data are
written; default the data file's folder). Requests of type ``query`` run one site step
(:mod:`fedsc.deploy.site`) and answer by the transport the coordinator names; ``train``
messages are SecAgg+ rounds (:mod:`fedsc.deploy.secagg`), handled by Flower's
``secaggplus_mod`` around :func:`train`.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from fedsc.deploy import fedscgen as _fedscgen  # noqa: F401  (registers its steps)
from fedsc.deploy.records import arrays_of, content, from_array_record, params_of, to_array_record
from fedsc.deploy.site import PUBLIC_STEPS, Site, value_to_arrays
from fedsc.errors import FedscInputError

app = ClientApp(mods=[secaggplus_mod])

_STATE_PREFIX = "fedsc:"


def site_of(context: Context) -> Site:
    """The site of this SuperNode, with the run state it kept."""
    cfg = context.node_config
    if "data-path" not in cfg:
        raise FedscInputError(
            "this SuperNode has no data: start it with --node-config "
            "'data-path=\"/path/to/site.h5ad\"'."
        )
    data = Path(str(cfg["data-path"]))
    site = Site(
        data,
        name=str(cfg["site"]) if cfg.get("site") else None,
        out_dir=Path(str(cfg.get("out-dir") or data.parent)),
    )
    for key, record in context.state.array_records.items():
        if key.startswith(_STATE_PREFIX):
            site.state[key[len(_STATE_PREFIX) :]] = from_array_record(record)
    return site


def keep_state(site: Site, context: Context) -> None:
    """Store the site's run state back into the context (kept by the SuperNode)."""
    for key, arrays in site.state.items():
        context.state.array_records[_STATE_PREFIX + key] = to_array_record(arrays)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Run one step; answer public facts, or the value through the named transport."""
    params = params_of(msg.content)
    step = str(params.get("step"))
    try:
        site = site_of(context)
        value = site.run(step, params, arrays_of(msg.content))
        keep_state(site, context)
        if step in PUBLIC_STEPS:
            return Message(content({"public": value}), reply_to=msg)
        transport = params.get("transport")
        if transport == "plaintext":
            arrays, bare = value_to_arrays(value)
            return Message(content({"bare": bare}, arrays), reply_to=msg)
        raise FedscInputError(f"unknown transport {transport!r} for step {step!r}.")
    except Exception as err:  # reported to the coordinator, which names this site
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        return Message(content({"error": detail}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One SecAgg+ round's value (Flower's ``secaggplus_mod`` masks what this returns)."""
    import flwr.compat.common.recorddict_compat as compat

    from fedsc.deploy.secagg import site_fit

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    site = site_of(context)
    fitres = site_fit(fitins, site.run)
    keep_state(site, context)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
