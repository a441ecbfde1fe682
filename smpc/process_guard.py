"""Party processes that die with their coordinator, leave nothing behind and bind explicitly.

* :func:`die_with` (in a local party or dealer, right after it starts):
  ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` on Linux (the direct parent is the fork server,
  which exits when the coordinator dies) with a SIGTERM handler that removes the
  coordinator's temporary folders and exits, plus a watchdog thread on the coordinator's
  pid (a ``pidfd`` where available, else polling) that does the same. So a SIGKILLed
  coordinator takes its parties, its rendezvous folder and its shared-memory folder with
  it, whatever the start method.
* :func:`owned_directory` names temporary folders ``<prefix><pid>-XXXX``;
  :func:`remove_stale_directories` (run at every start) removes those of dead processes,
  the last line of defence if every party was SIGKILLed at once.
* :func:`interface_for` finds the network interface holding an address (for gloo's
  ``GLOO_SOCKET_IFNAME``), so gloo never binds wherever the host name happens to resolve.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import re
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1
_SIOCGIFADDR = 0x8915
#: Prefixes of every temporary folder of a coordinator (rendezvous and shared memory).
PREFIXES = ("smpc-crypten-", "smpc-shm-")
_cleanup_paths: list[str] = []


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent exits (False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _exit_orphaned(*_: object) -> None:
    """Remove the coordinator's temporary folders and exit at once (any thread)."""
    for path in _cleanup_paths:
        shutil.rmtree(path, ignore_errors=True)
    os._exit(70)


def _watch(pids: Sequence[int]) -> None:
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            _exit_orphaned()
        except (AttributeError, OSError):
            fds = []
            break
    if fds:
        select.select(fds, [], [])
        _exit_orphaned()
    while all(_alive(p) for p in pids):
        threading.Event().wait(0.2)
    _exit_orphaned()


def die_with(pids: Sequence[int], cleanup: Sequence[str] = ()) -> None:
    """Exit (removing ``cleanup``) as soon as any of ``pids`` or this process's parent dies."""
    _cleanup_paths[:] = [p for p in cleanup if p]
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_orphaned)
        set_parent_death_signal(signal.SIGTERM)
    pids = [int(p) for p in pids if p]
    if any(not _alive(p) for p in pids):
        _exit_orphaned()
    if pids:
        threading.Thread(target=_watch, args=(pids,), name="smpc-parent-watch", daemon=True).start()


def owned_directory(prefix: str, root: str | None = None) -> str:
    """A fresh 0700 directory ``<root>/<prefix><pid>-XXXX`` owned by this process."""
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root)


def remove_stale_directories(roots: Sequence[str | None]) -> list[str]:
    """Remove this user's smpc folders whose owning process is gone; return their paths."""
    removed = []
    pattern = re.compile("^(" + "|".join(map(re.escape, PREFIXES)) + r")(\d+)-")
    for root in roots:
        root = root or tempfile.gettempdir()
        with contextlib.suppress(OSError):
            for entry in os.scandir(root):
                match = pattern.match(entry.name)
                if not match or int(match.group(2)) == os.getpid() or _alive(int(match.group(2))):
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False) and entry.stat().st_uid == os.getuid():
                        shutil.rmtree(entry.path, ignore_errors=True)
                        removed.append(entry.path)
    return removed


def interface_for(address: str) -> str | None:
    """Name of the local interface that holds IPv4 ``address`` (Linux), else None."""
    try:
        wanted = socket.inet_aton(socket.gethostbyname(address))
    except OSError:
        return None
    with contextlib.suppress(OSError, AttributeError):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                packed = struct.pack("256s", name.encode()[:15])
                with contextlib.suppress(OSError):
                    info = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, packed)
                    if info[20:24] == wanted:
                        return name
    return None


def source_address_towards(host: str, port: int) -> str | None:
    """The local IPv4 address this host uses to reach ``host`` (no packet is sent)."""
    with contextlib.suppress(OSError):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return str(s.getsockname()[0])
    return None
