"""A whole deployment on this machine: one SuperLink and one SuperNode per site file.

For tests, benchmarks and trying a deployment out (``fedsc deploy local``). Everything
listens on 127.0.0.1 (insecure HTTP: no TLS, no node authentication; docs/deployment.md
shows a real 3-site setup). The run itself is submitted with Flower's ``flwr run``; the
ServerApp writes ``run.json``/``ledger.json`` to ``out_dir`` and each site writes its
corrected data to its own folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad

from fedsc.deploy import trace
from fedsc.deploy.fleet import DeploymentError
from fedsc.deploy.site import AGREED_SITES_ENV, QUORUM_ENV
from fedsc.deploy.site_worker import new_key
from fedsc.errors import FedscInputError
from smpc import handshake, sealed
from smpc.options import CryptenOptions
from smpc.party.cli import party_argv

#: The Flower app folder ``flwr run`` packages.
APP_DIR = Path(__file__).parent / "flower_app"

#: The local parties' CrypTen options: the defaults, which the deployed coordinator's
#: aggregator (:class:`fedsc.deploy.crypten.DeployedCrypten`) is built with too.
PARTY_OPTIONS = CryptenOptions()


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (Flower reads node and run configs as TOML).

    Strings are TOML basic strings with every quote, backslash and control character
    escaped (a ``"`` in a path broke the ``key="value"`` node config Flower parses with a
    regular expression); numbers and booleans as TOML writes them.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FedscInputError(
            f"{text!r} is not valid UTF-8 (a file name from another encoding?); rename it."
        ) from None
    # JSON escapes quotes, backslashes and C0 controls as TOML does; TOML also needs DEL
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def write_toml(path: Path, config: Mapping[str, Any]) -> Path:
    """Write ``config`` as flat TOML ``key = value`` lines (for ``--node-config FILE.toml``)."""
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in config.items()))
    return path


def check_batch_names(names: Any, batch_key: str) -> None:
    """Batch names that become file names (``<batch>.h5ad``): no ``/``, not empty or dots."""
    bad = sorted(
        {str(n) for n in names if str(n) in ("", ".", "..") or "/" in str(n) or "\0" in str(n)}
    )
    if bad:
        raise FedscInputError(
            f"batch name(s) {bad} in {batch_key!r} cannot be file names (a site's file is "
            "<batch>.h5ad); rename those batches (no '/', not empty)."
        )


def split_by_batch(adata: ad.AnnData, batch_key: str, out_dir: str | Path) -> dict[str, Path]:
    """Write one h5ad per batch (``<out_dir>/<batch>.h5ad``, cells in their original order)."""
    out = Path(out_dir)
    if batch_key not in adata.obs:
        raise FedscInputError(
            f"adata has no obs column {batch_key!r} to split by; name it with --batch-key."
        )
    values = adata.obs[batch_key].astype(str).to_numpy()
    check_batch_names(set(values), batch_key)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in sorted(set(values)):
        path = out / f"{name}.h5ad"
        adata[values == name].copy().write_h5ad(path)
        paths[name] = path
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class LocalDeployment:
    """SuperLink + SuperNodes on 127.0.0.1; a context manager that stops them all.

    Parameters
    ----------
    sites
        ``{site name: h5ad path}``; one SuperNode each.
    workdir
        Folder for Flower's home, logs and the sites' outputs (default: a temp folder).
    idle_poll
        Longest poll interval of the SuperNodes while a run is active
        (:mod:`fedsc.deploy.supernode`, :mod:`fedsc.deploy.polling`).
    workers
        Give each site a long-lived worker (:mod:`fedsc.deploy.site_worker`).
    warm_clientapps
        Fork the ClientApp and ServerApp processes from warm SuperExecs
        (:mod:`fedsc.deploy.superexec`); ``False``: Flower's, a fresh interpreter per
        message (ClientApp) and per run (ServerApp).
    parties
        Also start three CrypTen parties and the dealer (``python -m smpc.party``, each
        with its own secret for the sites' sealed shares and its own identity key, bound
        to its rank by the deployment's roster; the coordinator gets only their addresses
        and the connection key, which takes no party's or dealer's place) and give each
        site its party keys.
    agreed_sites, quorum
        The sites agreed before the run (default: every site), given to each site
        (``$FEDSC_AGREED_SITES``, and ``$FEDSC_SITE_QUORUM`` when ``quorum`` is set: a run
        with held-out sites trains over fewer) and to the parties (``--sites``, when every
        operation lists all of them: no ``quorum`` below their number), so a coordinator
        cannot leave a site out from the first operation on (docs/deployment.md, "Threat
        model").
    """

    def __init__(
        self,
        sites: Mapping[str, str | Path],
        workdir: str | Path | None = None,
        *,
        idle_poll: float = 0.05,
        workers: bool = True,
        parties: bool = False,
        warm_clientapps: bool = True,
        agreed_sites: Sequence[str] | None = None,
        quorum: int | None = None,
    ) -> None:
        self.workers = workers
        self.warm_clientapps = warm_clientapps
        self.with_parties = parties
        self._client_secret: bytes | None = None
        #: ``HOST:PORT,...`` of the parties (the run config's ``parties``).
        self.party_addresses = ""
        self.sites = {str(k): Path(v) for k, v in sites.items()}
        #: The agreed sites (sorted) and the least number an operation may list.
        self.agreed_sites = sorted(str(s) for s in (agreed_sites or self.sites))
        self.quorum = quorum
        if quorum is not None and not 2 <= quorum <= len(self.agreed_sites):
            raise FedscInputError(
                f"quorum {quorum} must lie in 2..{len(self.agreed_sites)} (the agreed sites)."
            )
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fedsc-deploy-"))
        self.idle_poll = idle_poll
        self.home = self.workdir / "flwr-home"
        self.port = _free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # warm SuperExecs poll with a backoff whose longest wait this is
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5" if warm_clientapps else "0.05",
            "SMPC_AUTHKEY": secrets.token_hex(16),
        }

    def site_out(self, site: str) -> Path:
        """Where site ``site`` writes its corrected data."""
        return self.workdir / "sites" / site

    def __enter__(self) -> LocalDeployment:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        logf = open(self.workdir / f"{name}.log", "ab")  # a restarted site appends
        kind, _, site = name.partition("-")
        # a site's processes name it in the run's trace (fedsc.deploy.trace)
        env = self.env
        if kind in ("site", "worker"):
            env = {**env, trace.SITE_ENV: site, AGREED_SITES_ENV: ",".join(self.agreed_sites)}
            if self.quorum is not None:
                env[QUORUM_ENV] = str(self.quorum)
        proc = subprocess.Popen(
            args, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes[name] = proc
        return proc

    def start(self, timeout: float = 60.0) -> None:
        """Start the SuperLink and every site's SuperNode; wait until the link listens."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "fedsc-local"\n\n[superlink.fedsc-local]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self._spawn(
            "superlink",
            [
                sys.executable,
                "-m",
                "fedsc.deploy.superlink",
                *([] if self.warm_clientapps else ["--cold"]),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--port",
                str(self.port),
            ],
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                self._check_alive("superlink")
                time.sleep(0.1)
        else:
            raise DeploymentError(
                f"the SuperLink did not listen within {timeout:.0f} s; see {self.workdir}/superlink.log"
            )
        client_secret = secrets.token_bytes(32) if self.with_parties else None
        self._client_secret = client_secret
        if self.with_parties:
            self._write_identities()
        for index, name in enumerate(self.sites):
            self._start_site(index, name)

    def _start_site(self, index: int, name: str) -> None:
        """Start site ``name``'s worker and SuperNode (node config ``node-<index>.toml``)."""
        path = self.sites[name]
        client_secret = self._client_secret
        out = self.site_out(name)
        out.mkdir(parents=True, exist_ok=True)
        node_config: dict[str, Any] = {"data-path": path, "site": name, "out-dir": out}
        if client_secret is not None:
            # what each party's operator hands the site: its key at that party
            keys = [
                sealed.client_key(sealed.party_secret(client_secret, r), name).hex()
                for r in range(PARTY_OPTIONS.parties)
            ]
            key_file = self.workdir / f"party-keys-{name}"
            key_file.write_text("\n".join(keys))
            key_file.chmod(0o600)
            node_config["party-keys"] = key_file
        if self.workers:
            socket_path = self.workdir / f"worker-{name}.sock"
            key_file = self.workdir / f"worker-{name}.key"
            new_key(key_file)
            self._spawn(
                f"worker-{name}",
                [
                    sys.executable,
                    "-m",
                    "fedsc.deploy.site_worker",
                    "--data",
                    str(path),
                    "--socket",
                    str(socket_path),
                    "--key-file",
                    str(key_file),
                    "--site",
                    name,
                    "--out-dir",
                    str(out),
                ],
            )
            node_config.update({"worker": socket_path, "worker-key-file": key_file})
        # a TOML file: every path quoted as Flower parses it, whatever it holds
        node_file = write_toml(self.workdir / f"node-{index}.toml", node_config)
        self._spawn(
            f"site-{name}",
            [
                sys.executable,
                "-m",
                "fedsc.deploy.supernode",
                "--idle-poll",
                str(self.idle_poll),
                *([] if self.warm_clientapps else ["--cold"]),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(_free_port()),
                "--node-config",
                str(node_file),
            ],
        )

    def _write_identities(self) -> None:
        """Each rank's own identity key (parties 0..2, dealer 3) and the roster of them all.

        What each party's and the dealer's operator would make with ``python -m
        smpc.handshake keygen`` and exchange (the public keys only): the rendezvous then
        admits a rank only with that rank's key, not with the connection key the
        coordinator holds (docs/smpc.md, "Per-role identities").
        """
        roster = {}
        for rank in range(PARTY_OPTIONS.parties + 1):  # the last rank: the dealer
            private, public = handshake.generate_identity()
            path = self.workdir / f"identity-{rank}"
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable
            with os.fdopen(fd, "w") as f:
                f.write(private.hex() + "\n")
            roster[str(rank)] = public.hex()
        (self.workdir / "roster.json").write_text(json.dumps(roster, indent=1))

    def _start_parties(self, client_secret: bytes) -> None:
        """Three CrypTen parties and the dealer on 127.0.0.1, as ``fedsc party`` runs them.

        They serve one coordinator connection (one run); :meth:`run` starts them anew.
        """
        n = PARTY_OPTIONS.parties
        for rank in range(n + 1):
            old = self.processes.pop(f"party-{rank}", None)
            if old is not None and old.poll() is None:
                os.killpg(old.pid, signal.SIGKILL)
                old.wait()
        rendezvous = f"tcp://127.0.0.1:{_free_port()}"
        listen = [_free_port() for _ in range(n)]
        env = {**self.env, sealed.SECRET_ENV: client_secret.hex()}
        every_site = self.quorum is None or self.quorum == len(self.agreed_sites)
        for rank in range(n + 1):  # rank n: the trusted dealer
            flags = party_argv(  # the party parser's flags, from the one options object
                rank,
                rendezvous,
                PARTY_OPTIONS,
                listen=("127.0.0.1", listen[rank]) if rank < n else None,
                sites=self.agreed_sites if every_site else None,
                identity=self.workdir / f"identity-{rank}",
                roster=self.workdir / "roster.json",
            )
            args = [sys.executable, "-m", "smpc.party", *flags]
            logf = open(self.workdir / f"party-{rank}.log", "wb")
            self.processes[f"party-{rank}"] = subprocess.Popen(
                args, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.party_addresses = ",".join(f"127.0.0.1:{p}" for p in listen)

    def _check_alive(self, name: str) -> None:
        proc = self.processes[name]
        if proc.poll() is not None:
            log = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise DeploymentError(f"{name} exited with code {proc.returncode}:\n{log}")

    def run(
        self, run_config: Mapping[str, Any], out_dir: str | Path, timeout: float = 600.0
    ) -> dict[str, Any]:
        """Submit one run (``flwr run``) and wait for it; returns its ``run.json``."""
        out = Path(out_dir)
        if (out / "run.json").exists():
            (out / "run.json").unlink()
        if run_config.get("transport") == "crypten":
            if self._client_secret is None:
                raise DeploymentError("start the LocalDeployment with parties=True for crypten.")
            self._start_parties(self._client_secret)
        config = {
            "n-sites": len(self.sites),
            **({"parties": self.party_addresses} if self.party_addresses else {}),
            **dict(run_config),
            "out-dir": str(out),
        }
        toml = write_toml(self.workdir / f"run-{time.time_ns()}.toml", config)
        for name in self.processes:
            if not name.startswith("party-"):
                self._check_alive(name)
        trace.event("local", "submit")
        result = subprocess.run(
            [
                _bin("flwr"),
                "run",
                str(APP_DIR),
                "fedsc-local",
                "--stream",
                "--run-config",
                str(toml),
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        trace.event("local", "returned")
        if not (out / "run.json").exists():
            tail = (result.stdout + result.stderr)[-4000:]
            raise DeploymentError(
                f"the deployed run wrote no run.json (flwr run exit {result.returncode}):\n{tail}"
            )
        record = json.loads((out / "run.json").read_text())
        if "error" in record:
            error = str(record["error"])
            if error.startswith("FedscInputError: "):  # the run refused its input: exit 2
                raise FedscInputError(
                    f"the deployed run refused its input: {error.removeprefix('FedscInputError: ')}"
                )
            raise DeploymentError(f"the deployed run failed: {error}")
        return dict(record)

    def kill_site(self, name: str) -> None:
        """Kill one site's SuperNode, ClientApp processes and worker: a dropout."""
        for key in (f"site-{name}", f"worker-{name}"):
            proc = self.processes.get(key)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def killed_sites(self) -> list[str]:
        """Sites whose SuperNode or worker has stopped (e.g. by :meth:`kill_site`)."""
        return [
            name
            for name in self.sites
            if any(
                key in self.processes and self.processes[key].poll() is not None
                for key in (f"site-{name}", f"worker-{name}")
            )
        ]

    def restart_site(self, name: str) -> None:
        """Start site ``name`` again (a fresh worker and SuperNode), e.g. after a dropout.

        Its old node stays registered at the SuperLink until its heartbeats expire; the
        coordinator's hello takes the nodes that answer (:meth:`Fleet.connect`).
        """
        if name not in self.sites:
            raise DeploymentError(
                f"no site {name!r} in this deployment; sites: {list(self.sites)}."
            )
        self.kill_site(name)
        self._start_site(list(self.sites).index(name), name)

    def close(self) -> None:
        """Stop every process (SuperNodes first)."""
        for name in sorted(self.processes, key=lambda n: n == "superlink"):
            proc = self.processes[name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.processes.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()

    def remove(self) -> None:
        """Delete the work folder."""
        shutil.rmtree(self.workdir, ignore_errors=True)
