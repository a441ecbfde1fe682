"""A whole deployment on this machine: one SuperLink and one SuperNode per site file.

For tests, benchmarks and trying a deployment out (``fedsc deploy local``). Everything
listens on 127.0.0.1 (insecure HTTP: no TLS, no node authentication; docs/deployment.md
shows a real 3-site setup). Each run is submitted in this process through Flower's
Control API, as ``flwr run`` does (the app folder built into a FAB, ``StartRun``); the
ServerApp writes ``run.json``/``ledger.json`` to ``out_dir`` and each site writes its
corrected data to its own folder. :meth:`LocalDeployment.run` returns as soon as
``run.json`` is there (written last, atomically), not when Flower's log stream notices the
run's end (docs/deployment.md, "On one machine").
"""

from __future__ import annotations

import contextlib
import hashlib
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
from collections.abc import Callable, Mapping, Sequence
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


#: How often :func:`wait_for_record` looks for ``run.json`` and asks for the run's status.
RECORD_POLL = 0.05
STATUS_POLL = 1.0


def read_record(path: Path) -> dict[str, Any] | None:
    """The run record at ``path``, or ``None`` while there is none.

    The ServerApp writes it whole (a temp file renamed over it, :func:`fedsc.deploy.
    server_app.write_json`), so a file that exists is complete.
    """
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def wait_for_record(
    path: Path,
    status: Callable[[], str],
    timeout: float,
    *,
    poll: float = RECORD_POLL,
    status_every: float = STATUS_POLL,
) -> dict[str, Any]:
    """Wait for the run record at ``path``; return it as soon as it is there.

    Parameters
    ----------
    path
        Where the run's ServerApp writes ``run.json`` (with ``"error"`` when it failed).
    status
        The run's status as Flower's Control API gives it (``"running"``,
        ``"finished:failed"``, ...); asked every ``status_every`` seconds, so a run that
        ended without a record (its ServerApp killed, out of memory) is noticed then, not
        at the timeout.
    timeout
        Seconds to wait in all.

    Raises
    ------
    DeploymentError
        The run finished without writing ``path``, or ``timeout`` passed.
    """
    start = time.monotonic()
    deadline = start + timeout
    next_status = start + status_every
    while True:
        record = read_record(path)
        if record is not None:
            return record
        now = time.monotonic()
        if now >= next_status:
            state = status()
            next_status = now + status_every
            if state.startswith("finished"):
                # the ServerApp writes the record before it returns: look once more
                record = read_record(path)
                if record is not None:
                    return record
                raise DeploymentError(
                    f"the deployed run ended ({state}) without writing {path} (its ServerApp "
                    "was killed or crashed before it could record the failure)"
                )
        if now >= deadline:
            raise DeploymentError(
                f"the deployed run wrote no {path.name} within {timeout:.0f} s (status: "
                f"{status()}); pass a longer timeout if the run is that slow"
            )
        time.sleep(poll)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        self._control_client: Any = None  # the SuperLink's Control API, made on first use
        self._fab: Any = None  # the app as Flower's FAB, built on the first run
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

    def _control(self) -> Any:
        """A Control API client of this deployment's SuperLink (made once, as ``flwr`` does)."""
        if self._control_client is None:
            from flwr.cli.auth_plugin.noop_auth_plugin import NoOpCliAuthPlugin
            from flwr.cli.typing import SuperLinkConnection
            from flwr.cli.utils import init_http_client_from_connection

            address = f"127.0.0.1:{self.port}"
            connection = SuperLinkConnection("fedsc-local", address=address, insecure=True)
            # Flower prints "Using SuperLink: ..." for its CLI: to stderr, not our stdout
            with contextlib.redirect_stdout(sys.stderr):
                self._control_client = init_http_client_from_connection(
                    connection, auth_plugin=NoOpCliAuthPlugin(address)
                )
        return self._control_client

    def _submit(self, run_config_file: Path) -> int:
        """Start a run of the app with ``run_config_file``, as ``flwr run`` does; its id."""
        from flwr.cli.build import build_fab_from_disk
        from flwr.common.config import parse_config_args
        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.fab import Fab

        if self._fab is None:  # the app folder does not change while we run
            fab_bytes = build_fab_from_disk(APP_DIR)
            self._fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
        request = StartRunRequest(
            fab=fab_to_proto(self._fab),
            override_config=user_config_to_proto(parse_config_args([str(run_config_file)])),
            federation="",
        )
        try:
            response = self._control().StartRun(request)
        except Exception as err:
            self._check_alive("superlink")
            raise DeploymentError(f"the SuperLink refused the run: {err}") from err
        if not response.HasField("run_id"):
            raise DeploymentError(f"the SuperLink started no run: {response}")
        return int(response.run_id)

    def run_status(self, run_id: int) -> str:
        """Run ``run_id``'s status at the SuperLink, as ``flwr ls`` shows it.

        ``"running"``, ``"finished:completed"``, ``"finished:failed (details)"``, ...
        """
        from flwr.proto.control_pb2 import ListRunsRequest

        try:
            response = self._control().ListRuns(ListRunsRequest(run_id=run_id))
        except Exception as err:
            self._check_alive("superlink")
            raise DeploymentError(f"the SuperLink gave no status of run {run_id}: {err}") from err
        run = response.run_dict[run_id].status
        text = f"{run.status}:{run.sub_status}" if run.sub_status else str(run.status)
        return f"{text} ({run.details})" if run.details else text

    def run_log(self, run_id: int, chars: int = 4000) -> str:
        """The last ``chars`` characters of run ``run_id``'s log (``flwr log``), or why none."""
        from flwr.proto.control_pb2 import StreamLogsRequest

        try:
            stream = self._control().StreamLogs(StreamLogsRequest(run_id=run_id))
            text = next(iter(stream), None)
            stream.close()
        except Exception as err:
            return f"(no log of run {run_id}: {err})"
        return "" if text is None else str(text.log_output)[-chars:]

    def _stop(self, run_id: int) -> None:
        """Ask the SuperLink to stop run ``run_id`` (best effort: it may have ended)."""
        from flwr.proto.control_pb2 import StopRunRequest

        try:
            self._control().StopRun(StopRunRequest(run_id=run_id))
        except Exception:  # finished already, or the link is gone
            pass

    def run(
        self, run_config: Mapping[str, Any], out_dir: str | Path, timeout: float = 600.0
    ) -> dict[str, Any]:
        """Submit one run and wait for its ``run.json``; returns it.

        Submitted in this process through Flower's Control API (what ``flwr run`` does);
        returns as soon as the ServerApp has written ``run.json``. A run that ends without
        one (its ServerApp killed) is reported within about a second of Flower marking it
        finished, with its log's tail; after ``timeout`` seconds the run is stopped.
        """
        out = Path(out_dir)
        record_path = out / "run.json"
        record_path.unlink(missing_ok=True)
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
        start = time.monotonic()
        run_id = self._submit(toml)
        try:
            record = wait_for_record(
                record_path,
                lambda: self.run_status(run_id),
                max(timeout - (time.monotonic() - start), 0.0),
            )
        except DeploymentError as err:
            self._stop(run_id)
            raise DeploymentError(f"{err}; run {run_id}'s log:\n{self.run_log(run_id)}") from None
        trace.event("local", "returned")
        if "error" in record:
            error = str(record["error"])
            if error.startswith("FedscInputError: "):  # the run refused its input: exit 2
                raise FedscInputError(
                    f"the deployed run refused its input: {error.removeprefix('FedscInputError: ')}"
                )
            raise DeploymentError(f"the deployed run failed: {error}")
        return record

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
        if self._control_client is not None:
            self._control_client.close()
            self._control_client = None
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
