"""Import CrypTen 0.4.1 so that it works (and decodes correctly) on torch 2.13.

Every module of this project imports CrypTen through :func:`import_crypten`. Two fixes are
applied, both hand-written because CrypTen 0.4.1 is no longer maintained upstream:

1. ``crypten.nn.onnx_converter`` imports ``torch.onnx._internal.registration``, which torch
   moved to ``torch.onnx._internal.torchscript_exporter.registration``. We alias the old
   module name in :data:`sys.modules` before CrypTen is imported.
2. ``FixedPointEncoder.decode`` floors negative values dividing by ``scale - 1`` instead of
   ``scale``, so revealed negatives of magnitude >= 1 can be off by exactly 1, and it
   decodes to float32, which loses digits above ~256 at 16 precision bits. We replace it by
   an exact floor division (quotient + remainder / scale) decoded in float64.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType

_OLD_REGISTRATION = "torch.onnx._internal.registration"
_NEW_REGISTRATION = "torch.onnx._internal.torchscript_exporter.registration"

_lock = threading.Lock()
_crypten: ModuleType | None = None


def _alias_onnx_registration() -> None:
    if _OLD_REGISTRATION in sys.modules:
        return
    try:
        importlib.import_module(_OLD_REGISTRATION)
    except ImportError:
        sys.modules[_OLD_REGISTRATION] = importlib.import_module(_NEW_REGISTRATION)


def exact_decode(self, tensor):  # signature of FixedPointEncoder.decode
    """Decode a fixed-point ``LongTensor`` exactly: ``floor(t / s) + (t mod s) / s``.

    Returns float64 so that every integer part representable in the ring (< 2^47 at 16
    precision bits) keeps its fractional digits; scale 1 returns the integers unchanged.
    """
    import torch

    if tensor is None:
        return None
    if tensor.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"FixedPointEncoder.decode expects an integer tensor, got {tensor.dtype}")
    tensor = tensor.long()
    scale = int(self._scale)
    if scale == 1:
        return tensor.data
    quotient = torch.div(tensor, scale, rounding_mode="floor")
    remainder = tensor - quotient * scale  # in [0, scale): exact in int64
    return (quotient.double() + remainder.double() / scale).data


def import_crypten() -> ModuleType:
    """Import CrypTen with the torch-2.13 fixes applied; idempotent and thread-safe.

    Returns
    -------
    The ``crypten`` module.

    Raises
    ------
    ImportError
        When CrypTen is not installed; the message says how to install it.
    """
    global _crypten
    if _crypten is not None:
        return _crypten
    with _lock:
        if _crypten is not None:
            return _crypten
        _alias_onnx_registration()
        try:
            crypten = importlib.import_module("crypten")
        except ImportError as err:
            raise ImportError(
                f"CrypTen could not be imported ({err}); install it with "
                "`pip install --no-deps crypten==0.4.1 && pip install omegaconf onnx pyyaml` "
                "(never let pip resolve torch), or use the 'plaintext' backend."
            ) from err
        from crypten.encoder import FixedPointEncoder

        FixedPointEncoder.decode = exact_decode
        _crypten = crypten
        return crypten
