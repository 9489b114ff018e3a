"""Optimiser and learning-rate schedule of ``cfg.train.optimizer`` / ``cfg.train.scheduler``.

AdamW with the configured betas, eps and weight decay; weight decay applies to matrices only
(biases, norms and embeddings' 1-D parameters are not decayed, as in nanoGPT).

The schedule is per optimiser step (after gradient accumulation):

.. math::
    lr(s) = \\begin{cases} lr_0\\,(s + 1)/w & s < w \\\\
    lr_{min} + \\tfrac12 (lr_0 - lr_{min})\\,(1 + \\cos(\\pi\\,\\min(1, (s - w)/(T - w)))) & s \\geq w
    \\end{cases}

with w = ``warmup_steps`` capped at a tenth of the phase (a 2,000-step warm-up would
otherwise never end in a short run; the cap is logged) and T = ``t_max`` or, when null, the
phase's total optimiser steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["build_optimizer", "build_scheduler", "cosine_lr"]

log = logging.getLogger("spectramind.train")


def build_optimizer(params: Iterable[tuple[str, nn.Parameter]], cfg: Mapping[str, Any], lr: float) -> torch.optim.AdamW:
    """AdamW over named parameters; ``cfg`` is ``cfg.train.optimizer``."""
    name = str(cfg.get("name", "adamw")).lower()
    if name != "adamw":
        raise ValueError(f"train.optimizer.name must be 'adamw', got {name!r}")
    betas = tuple(float(b) for b in cfg["betas"])
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"train.optimizer.betas must be two values in [0, 1), got {list(betas)}")
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    decay, no_decay = [], []
    for _, p in params:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(cfg["weight_decay"])},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=float(cfg["eps"]))


def cosine_lr(step: int, base_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """The learning rate at optimiser step ``step`` (see the module docstring)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], base_lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine to ``min_lr`` over ``total_steps``; ``cfg`` is ``cfg.train.scheduler``."""
    name = str(cfg.get("name", "cosine")).lower()
    if name != "cosine":
        raise ValueError(f"train.scheduler.name must be 'cosine', got {name!r}")
    min_lr = float(cfg["min_lr"])
    if not 0 <= min_lr <= base_lr:
        raise ValueError(f"train.scheduler.min_lr must be in [0, lr={base_lr}], got {min_lr}")
    total = int(cfg["t_max"]) if cfg.get("t_max") is not None else max(1, total_steps)
    warmup = int(cfg["warmup_steps"])
    if warmup < 0:
        raise ValueError(f"train.scheduler.warmup_steps must be >= 0, got {warmup}")
    if warmup > total // 10:
        log.info("scheduler: warmup_steps %d capped at %d (a tenth of %d steps)", warmup, total // 10, total)
        warmup = total // 10
    warmup = max(warmup, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, base_lr, min_lr, warmup, total) / base_lr
    )
