"""What the deployment tests share (imported by name: no package here): the pancreas
batches that become the three sites, and the FedscGen run they deploy."""

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from fedsc.deploy.client_app import open_owner_delivery, seal_for_parties
from fedsc.deploy.records import content
from fedsc.deploy.site import Site
from fedsc.deploy.site_worker import answer
from fedsc.methods.fedscgen import FedScGenConfig

SITES = ["celseq", "celseq2", "smartseq2"]

# small hidden layers: every claim holds at any size, and each exchange stays cheap
CONFIG = FedScGenConfig(rounds=1, local_epochs=1, num_threads=1, hidden=(128, 128))
SEED = 3


def fedscgen_params() -> str:
    """The deployed FedscGen run's ``params`` (JSON), the same run as ``simulation``."""
    return json.dumps(
        {"config": CONFIG.to_dict(), "seed": SEED, "batch_key": "batch", "labels_key": "celltype"}
    )


def revive(deployment) -> None:
    """Restart every site a test killed (a fresh worker and SuperNode each): the deployment
    is shared by every test in this folder (conftest.py)."""
    for site in deployment.killed_sites():
        deployment.restart_site(site)


def received(folder: Path) -> list[tuple[dict, dict[str, np.ndarray]]]:
    """Every message the ServerApp logged (``log-messages``): (metadata, arrays)."""
    msgs = []
    for meta in sorted((folder / "messages").glob("*.json")):
        arrays = dict(np.load(meta.with_suffix(".npz")))
        msgs.append((json.loads(meta.read_text()), arrays))
    assert msgs, "the ServerApp logged no message"
    return msgs


def candidates(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every received array, and every byte string that holds a serialised array."""
    from flwr.common import bytes_to_ndarray

    out = []
    for arr in arrays.values():
        out.append(np.asarray(arr, dtype=np.float64).ravel())
        if arr.dtype == np.uint8:
            try:
                out.append(np.asarray(bytes_to_ndarray(arr.tobytes()), dtype=np.float64).ravel())
            except Exception:  # not a serialised array
                pass
    return out


def leaked_cells(folder: Path, data) -> list[tuple[str, str, str]]:
    """(site, step, array) of every received array holding a cell's expression row."""
    cells = {
        row.tobytes()
        for row in np.asarray(
            data.X.toarray() if hasattr(data.X, "toarray") else data.X, dtype=np.float32
        )
    }
    n_genes = data.n_vars
    found = []
    for meta, arrays in received(folder):
        for name, arr in arrays.items():
            if arr.size and arr.size % n_genes == 0:
                rows = np.asarray(arr, dtype=np.float32).reshape(-1, n_genes)
                if any(r.any() and r.tobytes() in cells for r in rows):
                    found.append((meta["site"], meta["step"], name))
    return found


def sites_whose_update_arrived(folder: Path, local_updates: dict) -> set[str]:
    """Sites one of whose round-0 update tensors a received array equals or correlates with."""
    updates = {
        s: [v.double().numpy().ravel() for v in r.state.values()] for s, r in local_updates.items()
    }
    found = set()
    for _, arrays in received(folder):
        for flat in candidates(arrays):
            for site, tensors in updates.items():
                for upd in tensors:
                    if flat.size != upd.size or upd.size < 16:
                        continue
                    close = np.allclose(flat, upd, atol=1e-6)
                    # |r| of unrelated vectors is ~N(0, 1/n): 6 sd keeps chance out
                    limit = max(0.2, 6.0 / np.sqrt(upd.size))
                    if close or abs(np.corrcoef(flat, upd)[0, 1]) > limit:
                        found.add(site)
    return found


class SiteFleet:
    """Real sites behind the coordinator's ``fleet.ask``: what each site's ClientApp runs.

    Each :class:`~fedsc.deploy.site.Site` reads its own h5ad and answers through
    ``site_worker.answer`` (and ``client_app.seal_for_parties`` for CrypTen); only the
    Flower transport is left out. ``facts``: the ``hello`` request (default: scBatchProx's).
    """

    def __init__(
        self,
        files: dict[str, Path],
        facts: dict[str, Any] | None = None,
        **site_options: Any,
    ) -> None:
        self.sites = {
            n: Site(p, name=n, out_dir=p.parent / "out", **site_options) for n, p in files.items()
        }
        self.node = {
            n: SimpleNamespace(
                node_config={"party-keys": str(p.parent / f"party-keys-{n}"), "site": n}
            )
            for n, p in files.items()
        }
        self.hello = {
            n: site.run("hello", facts or {"batch_key": "batch", "embedding_key": "X_pca"}, {})
            for n, site in self.sites.items()
        }

    def answer(self, name: str, step: str, params: dict[str, Any], arrays: Any) -> Any:
        """One site's answer to one request (raises the site's refusal)."""
        arrays = open_owner_delivery(self.node[name].node_config, params, dict(arrays or {}))
        kind, payload = answer(self.sites[name], step, params, arrays)
        if kind == "public" or params.get("transport") != "crypten":
            return payload
        meta, blobs = seal_for_parties(self.node[name], params, *payload)  # type: ignore[arg-type]
        return content({"meta": meta}, blobs)

    def ask(self, requests: dict[str, tuple[str, dict[str, Any], Any]]) -> dict[str, Any]:
        """``Fleet.ask``: every site answers its request."""
        return {s: self.answer(s, *request) for s, request in requests.items()}

    def value(self, reply: Any) -> Any:
        """``Fleet.value``: a plaintext reply is the site's (arrays, bare)."""
        return reply

    def apply(self, requests: dict[str, Any]) -> dict[str, Any]:
        """The public final step (each site writes its output)."""
        return {s: self.answer(s, *request) for s, request in requests.items()}
