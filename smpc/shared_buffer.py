"""Shared-memory buffers between the coordinator and a local party process.

A local party's shares need not go through a pipe: the coordinator writes them straight
into a file in ``/dev/shm`` (RAM) that both processes map, and the party writes its
result share there. Each party has its own file (mode 0600 in a private 0700 directory),
so it still sees only its own shares. Layout, in int64 values::

    [ result share (size) | input share of client 0 (size) | client 1 | ... ]

The coordinator creates, grows and removes the files; parties only map them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile

import numpy as np

_SHM_ROOT = "/dev/shm"


def shm_root() -> str | None:
    """``/dev/shm`` when present and writable, else None (the temp dir)."""
    return _SHM_ROOT if os.path.isdir(_SHM_ROOT) and os.access(_SHM_ROOT, os.W_OK) else None


def private_directory() -> str:
    """A fresh 0700 directory ``smpc-shm-<pid>-*`` in RAM (else in the temp dir)."""
    root = shm_root()
    # Named after this process, so a later start removes it if this process was killed
    # before it (or its parties) could (smpc.process_guard.remove_stale_directories).
    return tempfile.mkdtemp(prefix=f"smpc-shm-{os.getpid()}-", dir=root)


class SharedBuffer:
    """A file-backed int64 buffer mapped into this process.

    Parameters
    ----------
    path
        The file; created (mode 0600) with ``create=True``, else it must exist.
    n_values
        Capacity in int64 values (used with ``create=True``; else the file's size).
    populate
        Allocate every page now (``MAP_POPULATE``). The kernel allocates and zeroes a
        fresh tmpfs page on first touch at ~1 GB/s here, 10x slower than writing it again;
        populating moves that cost to where it can overlap other work (a background
        thread, the wait for starting parties).
    """

    def __init__(
        self, path: str, n_values: int = 0, create: bool = False, populate: bool = False
    ) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, max(8, 8 * int(n_values)))
            nbytes = os.fstat(fd).st_size
            flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
            self._map = mmap.mmap(fd, nbytes, flags=flags)
        finally:
            os.close(fd)
        self.values = np.frombuffer(self._map, dtype=np.int64)

    @property
    def capacity(self) -> int:
        """Capacity in int64 values."""
        return int(self.values.size)

    def result(self, size: int) -> np.ndarray:
        """The result-share region (``size`` values)."""
        return self.values[:size]

    def inputs(self, n_clients: int, size: int) -> np.ndarray:
        """The ``(n_clients, size)`` input-share region."""
        return self.values[size : size * (1 + n_clients)].reshape(n_clients, size)

    @staticmethod
    def values_needed(n_clients: int, size: int) -> int:
        """Capacity needed for one operation with ``n_clients`` input rows."""
        return size * (1 + n_clients)

    def close(self, unlink: bool = False) -> None:
        """Unmap (views must be gone); ``unlink`` also removes the file (coordinator)."""
        self.values = np.empty(0, dtype=np.int64)
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
