"""Message payloads: numpy arrays and JSON parameters in Flower records, losslessly.

A message's arrays travel packed in one Flower ``Array`` (each array's ``np.save``
bytes, concatenated: dtype, shape and every bit kept; object arrays refused), with
their names and byte ranges in a ``ConfigRecord``; parameters as one JSON string in
another ``ConfigRecord``; nothing is pickled. One ``Array`` rather than one per array:
Flower 1.41 moves every ``Array`` (and every 5 MB chunk of one) as an object of its own,
one HTTP request per object and hop, and a FedscGen model has 34 tensors.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

#: Record names of a fedsc message.
PARAMS = "fedsc.params"
ARRAYS = "fedsc.arrays"
#: Record of the packed arrays' index (JSON ``[[name, start, end], ...]``).
INDEX = "fedsc.index"
#: Key of the packed arrays' one ``Array`` in the ``ARRAYS`` record.
PACKED = "packed"
#: Array keys of an owner-revealed mean's delivery to a site (``secure_rows``): sealed
#: as the coordinator relays it (``owner/context``, ``owner/bits``,
#: ``owner/<rank>/<start>/<stop>``), and as the site's ClientApp opened it
#: (``owned/context``, ``owned/<start>``; plaintext: ``owned/<tensor key>``).
OWNER_PREFIX, OWNED_PREFIX = "owner/", "owned/"


def to_array_record(arrays: Mapping[str, Any]) -> ArrayRecord:
    """``{name: array or tensor}`` -> an ``ArrayRecord`` (tensors as numpy, bits kept)."""
    record = ArrayRecord()
    for key, value in arrays.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        record[str(key)] = Array(np.ascontiguousarray(np.asarray(value)))
    return record


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`to_array_record`."""
    return {key: np.asarray(array.numpy()) for key, array in record.items()}


def pack(arrays: Mapping[str, Any]) -> tuple[np.ndarray, list[list[Any]]]:
    """``{name: array or tensor}`` -> (one uint8 array, index ``[[name, start, end]]``)."""
    buffer = io.BytesIO()
    index: list[list[Any]] = []
    for key, value in arrays.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        start = buffer.tell()
        np.save(buffer, np.asarray(value), allow_pickle=False)
        index.append([str(key), start, buffer.tell()])
    return np.frombuffer(buffer.getbuffer(), dtype=np.uint8), index


def unpack(blob: np.ndarray, index: list[list[Any]]) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack`."""
    data = np.ascontiguousarray(blob, dtype=np.uint8).tobytes()
    return {
        str(key): np.load(io.BytesIO(data[int(start) : int(end)]), allow_pickle=False)
        for key, start, end in index
    }


def content(params: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> RecordDict:
    """A message content holding JSON ``params`` and optional ``arrays`` (packed)."""
    out = RecordDict({PARAMS: ConfigRecord({"json": json.dumps(dict(params))})})
    if arrays:
        blob, index = pack(arrays)
        out[ARRAYS] = ArrayRecord({PACKED: Array(blob)})
        out[INDEX] = ConfigRecord({"json": json.dumps(index)})
    return out


def params_of(record: RecordDict) -> dict[str, Any]:
    """The JSON parameters of a message content."""
    return dict(json.loads(str(record.config_records[PARAMS]["json"])))


def arrays_of(record: RecordDict) -> dict[str, np.ndarray]:
    """The arrays of a message content (empty when it has none)."""
    if ARRAYS not in record.array_records:
        return {}
    arrays = record.array_records[ARRAYS]
    if INDEX not in record.config_records or PACKED not in arrays:
        raise ValueError(
            "a fedsc message whose arrays are not packed (sent by another fedsc version?); "
            "run the same fedsc version at the coordinator and every site."
        )
    index = json.loads(str(record.config_records[INDEX]["json"]))
    return unpack(arrays[PACKED].numpy(), index)
