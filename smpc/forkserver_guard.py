"""Imported first by the parties' fork server: exit if the parent dies during the imports.

Python's fork server notices its parent's death (end of file on its "alive" pipe) only
once its preload imports have ended: ~2 s of torch and CrypTen, more on a loaded machine.
Started early (:func:`smpc.prestart`), a server whose coordinator was killed during those
imports outlived it by that long. Importing this module starts a thread that waits on the
parent (a ``pidfd``, else polling) and exits the process if it dies; :func:`release`
(called by :mod:`smpc.crypten_preload`, the last preload) stops the thread, so none runs
when the server forks the parties, and the server's own watch takes over.

The server's own watch ends it with ``SystemExit``, and the interpreter's teardown of torch
and CrypTen then took 0.5 s quiet and over 5 s on a loaded machine, a dead coordinator's
server outliving it by that long. :func:`release` therefore also registers an ``atexit``
hook that ends the process at once (``os._exit``): the server holds nothing to flush (its
children, the parties, end themselves with ``os._exit`` and watch their own parent).

Only the fork server imports this module (it is first in
:data:`smpc.party_pool.FORKSERVER_PRELOAD`).
"""

from __future__ import annotations

import atexit
import os
import select
import threading

_PARENT = os.getppid()
_stop_read, _stop_write = os.pipe()


def _watch() -> None:
    try:
        parent = os.pidfd_open(_PARENT)
    except ProcessLookupError:
        os._exit(70)
    except (AttributeError, OSError):  # no pidfd (old kernel): poll the parent
        while not select.select([_stop_read], [], [], 0.1)[0]:
            if os.getppid() != _PARENT:
                os._exit(70)
        return
    ready = select.select([parent, _stop_read], [], [])[0]
    if parent in ready:
        os._exit(70)
    os.close(parent)


_thread = threading.Thread(target=_watch, name="smpc-forkserver-guard", daemon=True)
_thread.start()


def _exit_at_once() -> None:
    os._exit(0)  # registered last, so it runs first: no teardown of torch and CrypTen


def release() -> None:
    """Stop watching (idempotent) and make the server's exit skip the teardown.

    The fork server's own alive pipe watches the parent from now on.
    """
    if _thread.is_alive():
        os.write(_stop_write, b"x")
        _thread.join()
        atexit.register(_exit_at_once)
