"""Normalisation layers of the SpectraMind model: RMSNorm and the ``rms | layernorm`` switch of the configs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["RMSNorm", "make_norm"]


class RMSNorm(nn.Module):
    r"""Root-mean-square layer normalisation (Zhang & Sennrich 2019), as in mamba_ssm.

    .. math::
        \mathbf{y} = \frac{\mathbf{x}}{\sqrt{\frac{1}{d}\sum_{k=1}^{d} x_k^2 + \epsilon}} \odot \mathbf{g}

    No centring and no bias: the Mamba blocks are trained this way and the scale alone
    is what keeps the residual stream bounded. The statistic is computed in fp32 so that an
    fp16/bf16 activation of a long light curve cannot overflow in :math:`x^2`.

    Args:
        dim: size :math:`d` of the last dimension.
        eps: :math:`\epsilon`, added to the mean square.

    Shapes:
        - **input:** :math:`(*, d)`
        - **output:** :math:`(*, d)`, the input's dtype
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, dim: int) -> nn.Module:
    """The normalisation named by a config (``"rms"`` or ``"layernorm"``) over a last dimension of ``dim``."""
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    raise ValueError(f"norm must be 'rms' or 'layernorm', got {kind!r}")
