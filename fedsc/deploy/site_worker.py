"""A site's worker: one long-lived process holding the site's data and run state.

Flower starts a fresh ClientApp process for every message; importing torch and reading
the site's h5ad each time costs seconds per exchange. The worker keeps both: the
ClientApp (a thin adapter, :mod:`fedsc.deploy.client_app`) forwards each step to it over
a local socket authenticated with a per-site key (``multiprocessing.connection``; the
worker and the SuperNode belong to the same site and machine). Without a worker the
ClientApp runs the step itself (same results, slower).

``python -m fedsc.deploy.site_worker --data SITE.h5ad --socket PATH --key-file FILE
[--site NAME] [--out-dir DIR]``
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import sys
import time
import traceback
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

from fedsc.deploy import trace
from fedsc.deploy.site import PUBLIC_STEPS, Site, load_method_steps, value_to_arrays


def new_key(path: str | Path) -> bytes:
    """Write a fresh 32-byte key readable by the owner only; return it."""
    key = secrets.token_bytes(32)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def answer(site: Site, step: str, params: dict[str, Any], arrays: dict[str, Any]) -> Any:
    """Run one step: ``("public", json)`` or ``("value", (arrays, bare))``."""
    value = site.run(step, params, arrays)
    if step in PUBLIC_STEPS:
        return ("public", value)
    return ("value", value_to_arrays(value))


def _warm_imports() -> None:
    """Import what a first training step would import lazily.

    torch's optimizers import ``torch._dynamo`` on their first ``step()`` (seconds of
    CPU); done here, it overlaps the coordinator's start instead of round 0.
    """
    try:
        importlib.import_module("torch._dynamo")
    except ImportError:  # a torch without dynamo: nothing to warm
        pass


def serve(site: Site, address: str, key: bytes) -> None:
    """Answer steps, one connection per request, until killed."""
    with Listener(address, family="AF_UNIX", authkey=key) as listener:
        # requests queue on the socket meanwhile: import the methods and read the data
        # now, while the coordinator starts, not inside the first exchange
        load_method_steps()
        site.adata  # noqa: B018 - read on first use
        _warm_imports()
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError):  # a failed authentication: keep serving
                continue
            with conn:
                try:
                    step, params, arrays = conn.recv()
                    start = time.perf_counter()
                    reply: Any = answer(site, step, params, arrays)
                    trace.event("worker", "step", step=step, seconds=time.perf_counter() - start)
                except Exception as err:  # reported to the coordinator, naming the site
                    reply = (
                        "error",
                        "".join(traceback.format_exception_only(type(err), err)).strip(),
                    )
                try:
                    conn.send(reply)
                except OSError:
                    continue


def call(
    address: str, key: bytes, step: str, params: dict[str, Any], arrays: dict[str, Any]
) -> Any:
    """Send one step to the worker at ``address``; its reply (see :func:`answer`)."""
    with Client(address, family="AF_UNIX", authkey=key) as conn:
        conn.send((step, params, arrays))
        return conn.recv()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m fedsc.deploy.site_worker")
    parser.add_argument("--data", required=True, help="the site's h5ad file")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--key-file", required=True, help="file with the worker's key")
    parser.add_argument("--site", default=None, help="site name (default: the file's batch)")
    parser.add_argument("--out-dir", default=None, help="where corrected data are written")
    args = parser.parse_args(argv)
    data = Path(args.data)
    site = Site(data, name=args.site, out_dir=Path(args.out_dir or data.parent))
    key = Path(args.key_file).read_bytes()
    if Path(args.socket).exists():
        Path(args.socket).unlink()
    serve(site, args.socket, key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
