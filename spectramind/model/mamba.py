"""The FGS1 temporal encoder: Mamba-1 selective state-space blocks (Gu & Dao 2023) over the light curve.

The layers follow ``mamba_ssm.modules.mamba_simple.Mamba`` (in_proj, causal depthwise conv,
x_proj, dt_proj with the mamba dt initialisation, S4D-real ``A_log``, ``D``, SiLU gate, out_proj)
so that a CUDA ``mamba_ssm`` block can serve as an oracle on a GPU. The recurrence itself is the
custom op ``spectramind::selective_scan`` (:mod:`spectramind.ops`): tracing records it by name,
and the reverse direction of a bidirectional layer is the op's ``reverse=True`` scan, never a
flipped copy of the activations.

Padding: every layer takes an optional ``mask`` (True = a real time step). Padded steps are
zeroed before the depthwise conv and at the scan input ``u``, so with padding at either end of
the sequence the outputs at real steps do not depend on what the padded steps hold, in both
scan directions (the state stays exactly zero while it crosses the padding).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spectramind.model.capture import capturing
from spectramind.model.norm import make_norm
from spectramind.ops import selective_scan

__all__ = ["BiMambaLayer", "FGS1Encoder", "FGS1Encoding", "MambaBlock"]


def _resolve_dt_rank(dt_rank: int | str, d_model: int) -> int:
    if dt_rank == "auto":
        return math.ceil(d_model / 16)
    if isinstance(dt_rank, int) and dt_rank > 0:
        return dt_rank
    raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")


def _check_mask(mask: Tensor | None, x: Tensor) -> Tensor | None:
    """``mask`` (batch, L) bool -> (batch, 1, L) in x's dtype for the channel-first scan tensors."""
    if mask is None:
        return None
    # Under tracing shapes are traced values; the check would only freeze the example's shape.
    if not capturing() and (mask.dtype != torch.bool or mask.shape != x.shape[:2]):
        raise ValueError(f"mask must be bool of shape {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
    return mask[:, None, :].to(x.dtype)


class _SelectiveSSM(nn.Module):
    """One scan direction of a Mamba mixer: depthwise conv, SiLU, input-dependent (Δ, B, C), selective scan.

    Shapes: x, z (batch, d_inner, L); mask (batch, 1, L) or None -> y (batch, d_inner, L).
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int,
        d_conv: int,
        dt_rank: int,
        reverse: bool,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        if d_conv < 1:
            raise ValueError(f"d_conv must be >= 1, got {d_conv}")
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = d_inner, d_state, d_conv, dt_rank
        self.reverse = reverse
        # Padding is applied in forward (left for the causal direction, right for the reverse one),
        # so the module only holds the weights, in mamba_ssm's (d_inner, 1, d_conv) layout.
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, bias=True)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)

        # mamba_ssm dt init: weights keep the variance of a rank-r projection; the bias is the inverse
        # softplus of a step size drawn log-uniformly in [dt_min, dt_max], so every channel starts
        # with its own time scale and softplus(bias) reproduces that draw exactly.
        std = dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]

        # S4D-real: A_n = -n per channel, stored as log so that A stays strictly negative (a stable decay).
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]

    def forward(self, x: Tensor, z: Tensor, mask: Tensor | None) -> Tensor:
        pad = self.d_conv - 1
        if mask is not None:
            x = x * mask
        if self.reverse:
            # Anti-causal conv: pad on the right and flip the (tiny) kernel, not the activations. With the
            # flip, this direction with weights w equals the causal direction with the same w run on the
            # time-reversed sequence, so weights port from flipped-copy implementations (Vim, Caduceus)
            # and the tests can check the reverse path against the forward one.
            x = F.conv1d(F.pad(x, (0, pad)), self.conv1d.weight.flip(-1), self.conv1d.bias, groups=self.d_inner)
        else:
            x = F.conv1d(F.pad(x, (pad, 0)), self.conv1d.weight, self.conv1d.bias, groups=self.d_inner)
        x = F.silu(x)
        if mask is not None:
            x = x * mask  # u = 0 on padded steps: the state neither gains from nor leaks through them

        x_dbl = self.x_proj(x.transpose(1, 2))  # (batch, L, dt_rank + 2 d_state)
        dt, b, c = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # The bias is passed to the op as delta_bias (as mamba_ssm does) so the softplus sees
        # dt_proj(dt) + bias inside the kernel in fp32.
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2).contiguous()
        b = b.transpose(1, 2).contiguous()
        c = c.transpose(1, 2).contiguous()
        a = -torch.exp(self.A_log.float())
        return selective_scan(
            x,
            delta,
            a,
            b,
            c,
            self.D.float(),
            z.contiguous(),
            self.dt_proj.bias.float(),
            delta_softplus=True,
            reverse=self.reverse,
        )


class MambaBlock(nn.Module):
    r"""A pre-norm residual Mamba-1 block with one scan direction.

    .. math::
        [\mathbf{x}; \mathbf{z}] &= W_{in}\, \mathrm{Norm}(\mathbf{h}) \\
        \mathbf{u} &= \mathrm{SiLU}(\mathrm{conv}_{d_{conv}}(\mathbf{x})) \\
        [\tilde\Delta; B; C] &= W_x \mathbf{u}, \quad \Delta = \mathrm{softplus}(W_{dt}\tilde\Delta + b_{dt}) \\
        \mathbf{s}_t &= e^{\Delta_t A}\mathbf{s}_{t-1} + \Delta_t B_t u_t, \quad
        y_t = \langle C_t, \mathbf{s}_t\rangle + D u_t \\
        \mathbf{h}' &= \mathbf{h} + \mathrm{Dropout}(W_{out}(\mathbf{y} \odot \mathrm{SiLU}(\mathbf{z})))

    with :math:`A = -\exp(A_{log})` (initialised to :math:`-1, \dots, -d_{state}` in every
    channel), :math:`D` initialised to ones, :math:`d_{inner} = \mathrm{expand}\cdot d_{model}`.
    The forward block is causal (conv padded on the left, scan from :math:`t = 0`); with
    ``reverse=True`` it is anti-causal (conv padded on the right with the kernel flipped, scan
    from :math:`t = L-1` down): output :math:`t` then depends on inputs :math:`\geq t` only.

    Args:
        d_model: width of the residual stream.
        d_state: state size :math:`N` per channel.
        d_conv: kernel size of the depthwise conv.
        expand: :math:`d_{inner} / d_{model}`.
        dt_rank: rank of the :math:`\Delta` projection; ``"auto"`` is :math:`\lceil d_{model}/16\rceil`.
        dropout: dropout on the mixer output before the residual add.
        norm: ``"rms"`` or ``"layernorm"``.
        reverse: scan from the end of the sequence (anti-causal).

    Shapes:
        - **input:** hidden :math:`(B, L, d_{model})`, mask :math:`(B, L)` bool or None
          (True = real step)
        - **output:** :math:`(B, L, d_{model})`
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dropout: float = 0.0,
        norm: str = "rms",
        reverse: bool = False,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        self.d_inner = d_inner
        self.norm = make_norm(norm, d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.ssm = _SelectiveSSM(d_inner, d_state, d_conv, _resolve_dt_rank(dt_rank, d_model), reverse)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        m = _check_mask(mask, hidden)
        x, z = self.in_proj(self.norm(hidden)).transpose(1, 2).chunk(2, dim=1)
        y = self.ssm(x, z, m)
        return hidden + self.dropout(self.out_proj(y.transpose(1, 2)))


class BiMambaLayer(nn.Module):
    r"""A pre-norm residual bidirectional Mamba layer: a causal and an anti-causal scan, merged by their mean.

    .. math::
        [\mathbf{x}; \mathbf{z}] &= W_{in}\, \mathrm{Norm}(\mathbf{h}) \\
        \mathbf{y}^{\rightarrow} &= \mathrm{SSM}^{\rightarrow}(\mathbf{x}) \odot \mathrm{SiLU}(\mathbf{z}), \quad
        \mathbf{y}^{\leftarrow} = \mathrm{SSM}^{\leftarrow}(\mathbf{x}) \odot \mathrm{SiLU}(\mathbf{z}) \\
        \mathbf{h}' &= \mathbf{h} + \mathrm{Dropout}\big(W_{out}\,\tfrac12(\mathbf{y}^{\rightarrow}
        + \mathbf{y}^{\leftarrow})\big)

    Each direction has its own conv, :math:`W_x`, :math:`W_{dt}`, :math:`A` and :math:`D` (as in
    :class:`MambaBlock`); ``in_proj``, the gate :math:`\mathbf{z}` and ``out_proj`` are shared
    (Vim's bidirectional Mamba). The merge is the mean rather than a projection of the
    concatenation: a projection :math:`[W_f\, W_b][\mathbf{y}^{\rightarrow}; \mathbf{y}^{\leftarrow}]`
    adds :math:`d_{inner} d_{model}` weights per layer to buy direction-specific output mixing,
    which the direction-specific :math:`W_x, W_{dt}, A, D` already provide; the mean keeps the
    output's scale that of a one-direction block at initialisation. The reverse scan is the
    op's ``reverse=True`` (no flipped copy of the activations) with an anti-causal conv.

    Args: as :class:`MambaBlock`, without ``reverse``.

    Shapes:
        - **input:** hidden :math:`(B, L, d_{model})`, mask :math:`(B, L)` bool or None
        - **output:** :math:`(B, L, d_{model})`
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dropout: float = 0.0,
        norm: str = "rms",
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        rank = _resolve_dt_rank(dt_rank, d_model)
        self.d_inner = d_inner
        self.norm = make_norm(norm, d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.ssm_fwd = _SelectiveSSM(d_inner, d_state, d_conv, rank, reverse=False)
        self.ssm_bwd = _SelectiveSSM(d_inner, d_state, d_conv, rank, reverse=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        m = _check_mask(mask, hidden)
        x, z = self.in_proj(self.norm(hidden)).transpose(1, 2).chunk(2, dim=1)
        y = 0.5 * (self.ssm_fwd(x, z, m) + self.ssm_bwd(x, z, m))
        return hidden + self.dropout(self.out_proj(y.transpose(1, 2)))


class FGS1Encoding(NamedTuple):
    """Output of :class:`FGS1Encoder`: pooled (B, proj_out) and per-step latents steps (B, T, d_model)."""

    pooled: Tensor
    steps: Tensor


class FGS1Encoder(nn.Module):
    r"""The FGS1 light-curve encoder: input projection, Mamba layers, final norm, masked mean+max pooling.

    .. math::
        \mathbf{h}^{(0)}_t &= W_{in}\mathbf{x}_t + \mathbf{b}_{in} \\
        \mathbf{h}^{(\ell)} &= \mathrm{Layer}_\ell(\mathbf{h}^{(\ell-1)}), \quad \ell = 1..n_{layers} \\
        \mathbf{s}_t &= \mathrm{Norm}(\mathbf{h}^{(n)}_t) \\
        \mathbf{p} &= W_{out}\Big[\tfrac{1}{|M|}\sum_{t\in M}\mathbf{s}_t\,;\ \max_{t\in M}\mathbf{s}_t\Big]
        + \mathbf{b}_{out}

    where :math:`M` is the set of real (unmasked) steps and the layers are :class:`BiMambaLayer`
    if ``bidirectional`` else :class:`MambaBlock`. Each layer's ``out_proj`` is scaled by
    :math:`1/\sqrt{n_{layers}}` at initialisation (mamba_ssm's pre-norm residual rescaling), so
    the residual stream's variance does not grow with depth. A row of ``mask`` must hold at
    least one real step.

    Built from the ``model.encoders.fgs1_mamba`` config node: ``in_features``, ``d_model``,
    ``d_state``, ``d_conv``, ``expand``, ``n_layers``, ``bidirectional``, ``dropout``,
    ``layer_norm`` (``rms | layernorm``) and ``proj_out`` are read here; ``enabled`` and
    ``export_step_latents`` are the model's decisions (the per-step latents are always returned).

    Shapes:
        - **input:** x :math:`(B, T, F_{in})` with :math:`F_{in}` = ``in_features``
          (flux, time_norm, centroid_x, centroid_y, jitter_x, jitter_y), mask :math:`(B, T)` bool
          or None (True = real step)
        - **output:** :class:`FGS1Encoding` with pooled :math:`(B, \text{proj\_out})` and steps
          :math:`(B, T, d_{model})`
    """

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.in_features = int(cfg["in_features"])
        d_model = int(cfg["d_model"])
        n_layers = int(cfg["n_layers"])
        if n_layers < 1:
            raise ValueError(f"encoders.fgs1_mamba.n_layers must be >= 1, got {n_layers}")
        self.d_model = d_model
        self.proj_out_dim = int(cfg["proj_out"])
        self.bidirectional = bool(cfg["bidirectional"])
        layer_cls = BiMambaLayer if self.bidirectional else MambaBlock
        self.in_proj = nn.Linear(self.in_features, d_model)
        self.layers = nn.ModuleList(
            layer_cls(
                d_model,
                d_state=int(cfg["d_state"]),
                d_conv=int(cfg["d_conv"]),
                expand=int(cfg["expand"]),
                dropout=float(cfg["dropout"]),
                norm=str(cfg["layer_norm"]),
            )
            for _ in range(n_layers)
        )
        self.norm_f = make_norm(str(cfg["layer_norm"]), d_model)
        self.proj_out = nn.Linear(2 * d_model, self.proj_out_dim)
        with torch.no_grad():
            for layer in self.layers:
                layer.out_proj.weight.div_(math.sqrt(n_layers))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> FGS1Encoding:
        if not capturing() and (x.dim() != 3 or x.shape[-1] != self.in_features):
            raise ValueError(f"fgs1 input must have shape (batch, time, {self.in_features}), got {tuple(x.shape)}")
        h = self.in_proj(x)
        for layer in self.layers:
            h = layer(h, mask)
        steps = self.norm_f(h)
        if mask is None:
            mean = steps.mean(1)
            peak = steps.amax(1)
        else:
            m = mask[..., None].to(steps.dtype)
            mean = (steps * m).sum(1) / m.sum(1).clamp_min(1.0)
            # finfo.min rather than -inf: a fully padded channel then gives a finite value, not inf/NaN.
            peak = steps.masked_fill(~mask[..., None], torch.finfo(steps.dtype).min).amax(1)
        pooled = self.proj_out(torch.cat([mean, peak], dim=-1))
        return FGS1Encoding(pooled=pooled, steps=steps)
