"""Transports between the coordinator and one party: the :class:`Channel` interface.

* :class:`ConnectionChannel`: a :class:`multiprocessing.connection.Connection` (a pipe to
  a local party process, or an authenticated TCP connection to a remote party). Only
  ``send_bytes``/``recv_bytes`` are used: frames (:mod:`smpc.framing`), never pickle.
* :class:`InProcessChannel`: two queues between threads of one process (like CrypTen's
  in-process ``Communicator``). Parties of additions-only operations need no CrypTen, so
  their loop can run in threads over these channels: fast unit tests of the protocol.

Both carry the same frames, so the in-process transport exercises the same encoding.
"""

from __future__ import annotations

import collections
import threading
from abc import ABC, abstractmethod
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from typing_extensions import override

from smpc import messages
from smpc.framing import FrameError, pack_array_header, payload_bytes, unpack_array_header


def _bytes_view(data: Any) -> memoryview:
    """A flat byte view of a bytes-like object or a contiguous array (no copy)."""
    return memoryview(data).cast("B")


class Channel(ABC):
    """A bidirectional, ordered stream of frames to one peer."""

    # ---------------------------------------------------------------- raw frames
    @abstractmethod
    def send_frame(self, data: bytes | memoryview | np.ndarray) -> None:
        """Send one frame (bytes-like; arrays are sent without copying where possible)."""

    @abstractmethod
    def recv_frame(self) -> bytes:
        """Receive one frame; raises ``EOFError`` when the peer closed the channel."""

    @abstractmethod
    def recv_frame_into(self, buffer: np.ndarray) -> int:
        """Receive one frame into ``buffer``; returns its length in bytes."""

    @abstractmethod
    def poll(self, timeout: float) -> bool:
        """Whether a frame can be received within ``timeout`` seconds."""

    @abstractmethod
    def close(self) -> None:
        """Close this end (idempotent)."""

    # ---------------------------------------------------------------- typed layer
    def send(self, message: Any) -> None:
        """Send a protocol message (:mod:`smpc.messages`)."""
        self.send_frame(messages.encode(message))

    def recv(self) -> Any:
        """Receive and type-check a protocol message."""
        return messages.decode(self.recv_frame())

    def send_array(self, array: np.ndarray) -> None:
        """Send an array as a header frame and a raw-bytes frame."""
        array = np.ascontiguousarray(array)
        self.send_frame(pack_array_header(array))
        self.send_frame(array)

    def recv_array(
        self, into: np.ndarray | None = None, dtype: Any = np.int64, max_values: int | None = None
    ) -> np.ndarray:
        """Receive an array sent with :meth:`send_array`.

        Parameters
        ----------
        into
            Contiguous array to receive into; the header must announce its dtype and shape.
        dtype
            Dtype expected when ``into`` is None.
        max_values
            Refuse larger arrays when ``into`` is None.
        """
        got_dtype, shape = unpack_array_header(self.recv_frame())
        expected = np.dtype(dtype) if into is None else into.dtype
        if got_dtype != expected:
            raise FrameError(f"expected a {expected} array, the header announces {got_dtype}.")
        if into is not None and tuple(into.shape) != shape:
            raise FrameError(f"expected shape {tuple(into.shape)}, the header announces {shape}.")
        nbytes = payload_bytes(got_dtype, shape)
        if into is None:
            if max_values is not None and nbytes > max_values * got_dtype.itemsize:
                raise FrameError(f"array of shape {shape} exceeds {max_values} values.")
            into = np.empty(shape, dtype=got_dtype)
        received = self.recv_frame_into(into)
        if received != nbytes:
            raise FrameError(f"array frame holds {received} bytes, its header announces {nbytes}.")
        return into


class ConnectionChannel(Channel):
    """A channel over a :class:`multiprocessing.connection.Connection` (pipe or TCP)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @override
    def send_frame(self, data: bytes | memoryview | np.ndarray) -> None:
        self.connection.send_bytes(_bytes_view(data))

    @override
    def recv_frame(self) -> bytes:
        return self.connection.recv_bytes()

    @override
    def recv_frame_into(self, buffer: np.ndarray) -> int:
        from multiprocessing import BufferTooShort

        try:
            return self.connection.recv_bytes_into(_bytes_view(buffer))
        except BufferTooShort:
            raise FrameError(f"frame larger than the {buffer.nbytes} bytes announced.") from None

    @override
    def poll(self, timeout: float) -> bool:
        return self.connection.poll(timeout)

    @override
    def close(self) -> None:
        self.connection.close()


class _Mailbox:
    """One direction of an in-process channel."""

    def __init__(self) -> None:
        self.frames: collections.deque[bytes | None] = collections.deque()
        self.ready = threading.Condition()

    def put(self, frame: bytes | None) -> None:
        with self.ready:
            self.frames.append(frame)
            self.ready.notify_all()

    def wait(self, timeout: float | None) -> bool:
        with self.ready:
            return self.ready.wait_for(lambda: bool(self.frames), timeout)

    def get(self) -> bytes:
        self.wait(None)
        frame = self.frames.popleft()
        if frame is None:
            self.frames.appendleft(None)  # stay closed for later readers
            raise EOFError("the peer closed the in-process channel")
        return frame


class InProcessChannel(Channel):
    """One end of a pair of in-process mailboxes (see :func:`in_process_pair`)."""

    def __init__(self, inbox: _Mailbox, outbox: _Mailbox) -> None:
        self._inbox, self._outbox = inbox, outbox
        self._closed = False

    @override
    def send_frame(self, data: bytes | memoryview | np.ndarray) -> None:
        if self._closed:
            raise BrokenPipeError("the in-process channel is closed")
        self._outbox.put(bytes(_bytes_view(data)))

    @override
    def recv_frame(self) -> bytes:
        return self._inbox.get()

    @override
    def recv_frame_into(self, buffer: np.ndarray) -> int:
        frame = self._inbox.get()
        view = _bytes_view(buffer)
        if len(frame) > view.nbytes:
            raise FrameError(f"frame larger than the {view.nbytes} bytes announced.")
        view[: len(frame)] = frame
        return len(frame)

    @override
    def poll(self, timeout: float) -> bool:
        return self._inbox.wait(timeout)

    @override
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.put(None)


def in_process_pair() -> tuple[InProcessChannel, InProcessChannel]:
    """Two connected in-process channel ends (coordinator side, party side)."""
    a_to_b, b_to_a = _Mailbox(), _Mailbox()
    return InProcessChannel(b_to_a, a_to_b), InProcessChannel(a_to_b, b_to_a)
