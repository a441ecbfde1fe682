"""Slow, literal scBatchProx local training with torch autograd and ``torch.optim.Adam``.

The reference the vectorised implementation in :mod:`fedsc.methods.scbatchprox` is
tested against, and the baseline of ``benchmarks/bench_scbatchprox.py``: one client at a
time, real minibatches of cells, the loss written exactly as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch
from typing_extensions import override

from fedsc.federation import LocalResult, State
from fedsc.methods.scbatchprox import ScBatchProxFederation, epoch_batches


class ReferenceScBatchProxFederation(ScBatchProxFederation):
    """Same method, local update by autograd, one client at a time (no batching)."""

    @override
    def local_update(
        self, client: int, global_state: State, round_index: int, generator: torch.Generator
    ) -> LocalResult:
        cfg = self.config
        row = self.client_rows[client]
        gamma_t = global_state["gamma"].to(torch.float64)
        beta_t = global_state["beta"].to(torch.float64)
        gamma_b = gamma_t[row].clone().requires_grad_(True)
        beta_b = beta_t[row].clone().requires_grad_(True)
        opt = torch.optim.Adam([gamma_b, beta_b], lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
        z = torch.from_numpy(self.train_z[client])
        # Rows of other batches are held at the global value (not trainable here).
        others = torch.ones(gamma_t.shape[0], dtype=torch.bool)
        others[row] = False
        const_reg = (gamma_t[others] ** 2).sum() + (beta_t[others] ** 2).sum()
        losses = []
        for idx in epoch_batches(len(z), cfg.batch_size, cfg.local_epochs, generator):
            zb = z[torch.from_numpy(np.asarray(idx))]
            recon = ((gamma_b * zb + beta_b - zb) ** 2).sum(dim=1).mean()
            prox = ((gamma_b - gamma_t[row]) ** 2).sum() + ((beta_b - beta_t[row]) ** 2).sum()
            reg = (gamma_b**2).sum() + (beta_b**2).sum() + const_reg
            loss = recon + cfg.mu * prox + cfg.lam * reg
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(recon.detach()))
        g_new, b_new = gamma_t.clone(), beta_t.clone()
        g_new[row], b_new[row] = gamma_b.detach(), beta_b.detach()
        return LocalResult(
            {"gamma": g_new, "beta": b_new},
            weight=float(len(z)),
            metrics={"recon_loss": float(np.mean(losses))},
        )

    # The engine uses local_updates when a method has it; the reference must not.
    local_updates = None  # type: ignore[assignment]
