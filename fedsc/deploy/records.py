"""Message payloads: numpy arrays and JSON parameters in Flower records, losslessly.

Arrays travel as Flower ``Array`` objects (``np.save`` bytes: dtype, shape and every bit
kept), parameters as one JSON string in a ``ConfigRecord``; nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

#: Record names of a fedsc message.
PARAMS = "fedsc.params"
ARRAYS = "fedsc.arrays"


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


def content(params: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> RecordDict:
    """A message content holding JSON ``params`` and optional ``arrays``."""
    out = RecordDict({PARAMS: ConfigRecord({"json": json.dumps(dict(params))})})
    if arrays:
        out[ARRAYS] = to_array_record(arrays)
    return out


def params_of(record: RecordDict) -> dict[str, Any]:
    """The JSON parameters of a message content."""
    return dict(json.loads(str(record.config_records[PARAMS]["json"])))


def arrays_of(record: RecordDict) -> dict[str, np.ndarray]:
    """The arrays of a message content (empty when it has none)."""
    if ARRAYS not in record.array_records:
        return {}
    return from_array_record(record.array_records[ARRAYS])
