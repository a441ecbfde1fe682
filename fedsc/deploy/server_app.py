"""The fedsc ServerApp: the coordinator of a deployed run. It never holds a cell.

Run config (``flwr run ... --run-config``; defaults in the app's pyproject.toml):
``method`` (``"fedscgen"``), ``params`` (the method's parameters as JSON, e.g. the
FedscGen config, seed, batch_key, labels_key), ``transport`` (``"plaintext"`` or
``"secagg+"``), ``n-sites``, ``out-dir`` (where ``run.json`` and ``ledger.json`` go, on the
coordinator's machine), ``log-messages`` (also write every received message to
``<out-dir>/messages/`` for inspection), ``timeout`` (seconds per step).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsc.deploy.records import params_of

app = ServerApp()


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` whole: a temp file beside it, renamed over it.

    ``os.replace`` is atomic on POSIX, so whoever waits for ``run.json``
    (:func:`fedsc.deploy.local.wait_for_record`) never reads it half written.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=1, default=float)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_deployed(grid: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Coordinate one deployed run over ``grid``; returns the run record (also written)."""
    from fedsc.deploy import trace
    from fedsc.deploy.drivers import driver_module
    from fedsc.deploy.fleet import Fleet, MessageLog

    trace.event("coordinator", "serverapp_start")
    start = time.perf_counter()
    out_dir = Path(str(config["out-dir"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    log = MessageLog(out_dir / "messages" if config.get("log-messages") else None)
    fleet = Fleet(grid, int(config["n-sites"]), timeout=float(config["timeout"]), log=log)
    params = json.loads(str(config["params"]))
    method = str(config["method"])
    transport = str(config["transport"])
    aggregator: Any = None

    # a random id of this run, sent with the final (output-writing) step: each site output
    # names it, and `fedsc deploy evaluate` refuses outputs of another run
    run_token = secrets.token_hex(16)

    def apply(requests: dict[str, Any]) -> dict[str, Any]:
        requests = {
            s: (step, {**step_params, "run_token": run_token}, arrays)
            for s, (step, step_params, arrays) in requests.items()
        }
        replies = fleet.ask(requests)
        return {s: params_of(r)["public"] for s, r in replies.items()}

    import numpy as np

    def save_round(r: int, state: dict[str, Any]) -> None:
        # the coordinator's own global model after each round
        np.savez(out_dir / f"model-round{r}.npz", **{k: v.numpy() for k, v in state.items()})

    try:  # a failed run (bad config, a site or party that fails) still writes run.json
        from fedsc.methods import get_method

        driver = driver_module(method).run
        facts = ("batch_key", "labels_key", "embedding_key", "layer")
        hello = fleet.connect(
            {
                **{k: params[k] for k in facts if params.get(k) is not None},
                # each site checks its data is what the method reads (as `fedsc run` does)
                "input": get_method(method).input,
                "method": method,
            }
        )
        aggregator = transport_aggregator(transport, fleet, config)
        record = driver(hello, aggregator, apply, params, on_round_end=save_round, live=fleet.live)
    except Exception as err:
        failed = {"error": f"{type(err).__name__}: {err}", "params": params}
        if aggregator is not None:
            write_json(out_dir / "ledger.json", aggregator.ledger.to_dict())
        write_json(out_dir / "run.json", failed)
        raise
    finally:
        if aggregator is not None:
            aggregator.close()
    np.savez(out_dir / "model.npz", **record.pop("model_state"))
    record.update(
        {
            "run_token": run_token,
            "method": method,
            "deployment": {
                "transport": transport,
                "sites": sorted(hello),
                "messages": len(log.entries),
            },
            "params": params,
            "backend": aggregator.name,
            "private": aggregator.private,
            "privacy": aggregator.privacy_note,
            "seconds": time.perf_counter() - start,
        }
    )
    # traced before run.json: the waiting LocalDeployment may return right after it
    trace.event("coordinator", "serverapp_end")
    write_json(out_dir / "ledger.json", aggregator.ledger.to_dict())
    write_json(out_dir / "run.json", record)  # last: its presence means the run is done
    return record


def transport_aggregator(transport: str, fleet: Any, config: dict[str, Any]) -> Any:
    """The deployed aggregator of ``transport`` over ``fleet`` (run config ``config``)."""
    from fedsc.deploy.aggregators import DeployedPlaintext
    from fedsc.deploy.drivers import check_transport
    from fedsc.deploy.secagg import DeployedSecAggPlus
    from fedsc.errors import FedscInputError

    check_transport(transport)
    if transport == "plaintext":
        return DeployedPlaintext(fleet)
    if transport == "secagg+":
        return DeployedSecAggPlus(fleet, clipping_range=float(config["secagg-clip"]))
    from fedsc.deploy.crypten import DeployedCrypten, parse_parties  # transport crypten

    if not config.get("parties"):
        raise FedscInputError(
            "transport crypten needs the parties' addresses: run config "
            "parties='HOST:PORT,HOST:PORT,HOST:PORT' (and $SMPC_AUTHKEY)."
        )
    return DeployedCrypten(
        fleet, parse_parties(str(config["parties"])), timeout=float(config["timeout"])
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point."""
    run_deployed(grid, dict(context.run_config))
