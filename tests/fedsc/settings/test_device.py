"""The ``device`` setting (issue 20): CUDA when torch sees one, the CPU otherwise.

No GPU here: the CUDA branch is exercised by faking what torch reports, and the trainers'
placement by a stand-in device ("meta") that records where the model went.
"""

from __future__ import annotations

import pytest
import torch

from fedsc import settings
from fedsc.errors import FedscInputError
from fedsc.methods import vae
from fedsc.methods.fedscgen import FedScGenConfig, FedScGenMethod


@pytest.fixture
def values(monkeypatch):
    monkeypatch.setattr(settings, "_values", dict(settings._values))


def test_device_values_are_checked(values, monkeypatch):
    assert settings.device == "auto"
    for given, stored in (("CPU", "cpu"), (" cuda ", "cuda"), ("cuda:1", "cuda:1"), ("", "auto")):
        settings.device = given
        assert settings.device == stored
    for bad in ("gpu", "cuda:x", "cpu:0", "mps"):
        with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
            settings.device = bad
    monkeypatch.setenv("FEDSC_DEVICE", "tpu")
    with pytest.raises(FedscInputError, match="FEDSC_DEVICE='tpu' is not valid"):
        settings._from_env()
    monkeypatch.setenv("FEDSC_DEVICE", "cpu")
    assert settings._from_env()["device"] == "cpu"


def test_resolved_device_follows_torch(values, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings.device = "auto"
    assert settings.resolved_device() == "cpu"
    settings.device = "cuda"
    with pytest.raises(FedscInputError, match=r"torch sees no CUDA device.*device='auto' or 'cpu'"):
        settings.resolved_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    settings.device = "auto"
    assert settings.resolved_device() == "cuda"
    settings.device = "cuda:1"
    assert settings.resolved_device() == "cuda:1"
    settings.device = "cuda:2"
    with pytest.raises(FedscInputError, match=r"sees 2 CUDA device\(s\) \(0..1\)"):
        settings.resolved_device()
    settings.device = "cpu"  # never asks torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: 1 / 0)
    assert settings.resolved_device() == "cpu"


def test_fedscgen_places_its_model_on_the_device(monkeypatch):
    x = torch.rand(80, 12)
    cfg = FedScGenConfig(hidden=(8,), latent=2, batch_size=16, rounds=1, local_epochs=1)
    assert vae.model_device(FedScGenMethod({0: x}, cfg, seed=0).model).type == "cpu"
    monkeypatch.setattr(settings, "resolved_device", lambda: "meta")
    method = FedScGenMethod({0: x}, cfg, seed=0)
    assert {p.device.type for p in method.model.parameters()} == {"meta"}
    # the initial state (what round 1 broadcasts) was taken before the move: on the CPU
    assert {v.device.type for v in method.initial_state().values()} == {"cpu"}


def test_helpers_return_cpu_tensors_on_the_cpu():
    model = vae.VAE(6, vae.VAEConfig(hidden=(4,), latent=2), vae.derive_generator(0, 0))
    assert vae.place(model) is model and vae.model_device(model).type == "cpu"
    z = vae.encode_mean(model, torch.rand(5, 6))
    assert z.device.type == "cpu" and z.shape == (5, 2)
    assert vae.decode(model, z).device.type == "cpu"
