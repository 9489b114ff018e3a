"""Positional encodings of the spectral bins: Fourier features of the wavelength, transformer sinusoids.

A GNN is blind to where a node sits on the wavelength axis except through its edges; these
encodings hand each bin its position directly. The bin grid is fixed, so each module holds the
(N,) positions and returns the (N, dim) table, which the caller broadcasts over the batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "FourierEncoding",
    "SinusoidalEncoding",
    "build_positional_encoding",
    "fourier_features",
    "normalise_wavelengths",
    "sinusoidal_encoding",
]


def _check_dim(dim: int, who: str) -> None:
    if dim <= 0 or dim % 2:
        raise ValueError(f"{who}: dim must be a positive even number (sin/cos pairs), got {dim}")


def normalise_wavelengths(wavelengths: Tensor) -> Tensor:
    r"""Map wavelengths affinely onto [0, 1]: :math:`t = (\lambda - \lambda_{min}) / (\lambda_{max} - \lambda_{min})`.

    Shapes:
        - **input:** wavelengths (N,), not all equal.
        - **output:** t (N,) in [0, 1], same dtype.
    """
    if wavelengths.dim() != 1:
        raise ValueError(f"wavelengths must be 1-D (N,), got {tuple(wavelengths.shape)}")
    lo, hi = wavelengths.min(), wavelengths.max()
    if not bool(hi > lo):
        raise ValueError("wavelengths must span a non-zero range to be normalised")
    return (wavelengths - lo) / (hi - lo)


def fourier_features(t: Tensor, freqs: Tensor) -> Tensor:
    r"""Fourier features :math:`[\sin(2\pi f_k t), \cos(2\pi f_k t)]_{k=1..K}`.

    Shapes:
        - **input:** t (N,); freqs (K,).
        - **output:** (N, 2K), the K sines first, then the K cosines.
    """
    angle = 2.0 * math.pi * t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def sinusoidal_encoding(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    r"""Transformer sinusoids (Vaswani et al. 2017) at arbitrary real positions.

    .. math::
        PE_{p, 2k} = \sin(p / base^{2k/dim}), \qquad PE_{p, 2k+1} = \cos(p / base^{2k/dim})

    Shapes:
        - **input:** positions (N,), e.g. the bin index 0..N-1.
        - **output:** (N, dim), sines and cosines interleaved as in the paper.
    """
    _check_dim(dim, "sinusoidal_encoding")
    k = torch.arange(0, dim, 2, dtype=positions.dtype, device=positions.device)
    angle = positions[:, None] / base ** (k / dim)[None, :]
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(positions.shape[0], dim)


class FourierEncoding(nn.Module):
    r"""Fourier features of the normalised wavelength :math:`t \in [0, 1]`.

    .. math::
        PE(t) = [\sin(2\pi f_k t), \cos(2\pi f_k t)]_{k=1..dim/2}

    ``frequencies='log'``: :math:`f_k = 2^{k-1}`, from one period across the band to one every
    :math:`2^{1-dim/2}` of it (for dim 16, 128 periods: about two bins each over 283 bins, the
    finest a sampled grid resolves). ``'random'``: :math:`f_k \sim |\mathcal{N}(0, \sigma^2)|`
    (Tancik et al. 2020) drawn from ``seed``; the draw is a persistent buffer, so a checkpoint
    carries its own frequencies.

    Shapes:
        - **input:** wavelengths (N,) at construction; ``forward()`` takes nothing.
        - **output:** (N, dim).
    """

    def __init__(
        self,
        wavelengths: Tensor,
        dim: int = 16,
        frequencies: str = "log",
        sigma: float = 10.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_dim(dim, "FourierEncoding")
        half = dim // 2
        if frequencies == "log":
            freqs = 2.0 ** torch.arange(half, dtype=torch.float32)
        elif frequencies == "random":
            gen = torch.Generator().manual_seed(seed)
            freqs = (torch.randn(half, generator=gen) * sigma).abs()
        else:
            raise ValueError(f"FourierEncoding.frequencies must be 'log' or 'random', got {frequencies!r}")
        self.dim = dim
        self.register_buffer("freqs", freqs)
        # Positions are rebuilt from the grid on construction; keeping them out of the state dict
        # lets a checkpoint load onto the same grid whatever its float64 round trip did.
        self.register_buffer("t", normalise_wavelengths(wavelengths.detach().to(torch.float32)), persistent=False)

    def forward(self) -> Tensor:
        return fourier_features(self.t, self.freqs)

    def extra_repr(self) -> str:
        return f"n={self.t.shape[0]}, dim={self.dim}"


class SinusoidalEncoding(nn.Module):
    r"""Transformer sinusoids over the bin index (default) or the wavelength.

    ``over='index'``: :math:`p = 0..N-1`. ``over='wavelength'``: :math:`p = (N-1)\,t` with ``t`` the
    normalised wavelength, the same range of positions but spaced like the wavelengths (the
    FGS1 bin sits far from the AIRS bins).

    .. math::
        PE_{p, 2k} = \sin(p / base^{2k/dim}), \qquad PE_{p, 2k+1} = \cos(p / base^{2k/dim})

    Shapes:
        - **input:** wavelengths (N,) at construction; ``forward()`` takes nothing.
        - **output:** (N, dim).
    """

    def __init__(self, wavelengths: Tensor, dim: int = 16, over: str = "index", base: float = 10000.0) -> None:
        super().__init__()
        _check_dim(dim, "SinusoidalEncoding")
        n = wavelengths.shape[0]
        if over == "index":
            pos = torch.arange(n, dtype=torch.float32)
        elif over == "wavelength":
            pos = normalise_wavelengths(wavelengths.detach().to(torch.float32)) * (n - 1)
        else:
            raise ValueError(f"SinusoidalEncoding.over must be 'index' or 'wavelength', got {over!r}")
        self.dim = dim
        self.register_buffer("table", sinusoidal_encoding(pos, dim, base), persistent=False)

    def forward(self) -> Tensor:
        return self.table

    def extra_repr(self) -> str:
        return f"n={self.table.shape[0]}, dim={self.dim}"


def build_positional_encoding(kind: str, wavelengths: Tensor, dim: int) -> nn.Module:
    """The encoding named by ``positional_encoding.kind``: ``'fourier'`` (log-spaced) or ``'sinusoidal'`` (bin index).

    Shapes:
        - **input:** wavelengths (N,).
        - **output:** a module whose ``forward()`` returns (N, dim).
    """
    if kind == "fourier":
        return FourierEncoding(wavelengths, dim, frequencies="log")
    if kind == "sinusoidal":
        return SinusoidalEncoding(wavelengths, dim, over="index")
    raise ValueError(f"positional_encoding.kind must be 'fourier' or 'sinusoidal', got {kind!r}")
