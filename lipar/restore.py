"""Token restore (paper 2.4.3): fill pruned positions from the previous frame."""

from __future__ import annotations

import torch

from .plan import PruningPlan
from .validate import check_latent


def restore_latent(latent: torch.Tensor, plan: PruningPlan | None) -> torch.Tensor:
    """Fill every pruned token of ``latent`` [B, 16, T, H, W] with the token at the same
    (y, x) in its source frame, the latest kept frame before it (chains of pruned frames
    copy the latest kept one). Returns a new tensor; ``latent`` is not modified.
    """
    check_latent(latent, what="latent to restore")
    if plan is None:
        return latent.clone()
    plan.check_fits(tuple(latent.shape))
    src = plan.source_frame.to(latent.device)                    # [B, T, Hp, Wp]
    idx = src.repeat_interleave(2, 2).repeat_interleave(2, 3)     # [B, T, H, W]
    idx = idx.unsqueeze(1).expand_as(latent)
    return torch.gather(latent, 2, idx)
