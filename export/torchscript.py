"""TorchScript artifact: ``torch.jit.trace`` of the :class:`export.module.ExportModule`.

The custom operators are opaque to the tracer, so the saved graph calls
``spectramind::selective_scan`` and ``spectramind::gat_attention`` by name: loading the file
needs only ``import spectramind`` (which registers the ops, with their CPU implementations), and
on a GPU the implementations ``triton_kernels`` registers run instead, provided the trace baked no
device into the graph: ``torch.jit.load(map_location=...)`` moves weights and buffers, not a
``device="cpu"`` argument the tracer recorded as a constant (e.g. ``torch.arange(n,
device=t.device)``), so :func:`baked_devices` lists such constants and export records them in the
manifest (``formats.torchscript.baked_devices``; empty means the file runs on any device). The batch axis stays
dynamic: the traced graph reads the batch size from its inputs (nothing in the model's forward
bakes it in), which :mod:`export.parity` checks at every batch bucket.

The trace is taken in eval mode under ``torch.no_grad`` on the CPU. ``check_trace`` is off:
re-running the trace to compare would double the export time and parity compares the saved
file against the eager model anyway. ``strict=False`` admits the plain (mu, sigma) tuple.

Shapes: as the module traced (fgs1 (B, T, 6), airs_nodes (B, 283, 8) -> mu, sigma (B, 283)).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

import spectramind  # noqa: F401  (registers the custom ops a traced graph calls)

__all__ = ["CUSTOM_OPS", "baked_devices", "export_torchscript", "graph_ops", "load_torchscript"]

CUSTOM_OPS = ("spectramind::selective_scan", "spectramind::gat_attention")


def export_torchscript(module: nn.Module, example: tuple[Tensor, Tensor], path: str | Path) -> None:
    """Trace ``module`` on ``example`` and save it to ``path``.

    Raises ValueError naming the op when the saved graph lacks one of ``CUSTOM_OPS`` (the
    model would then run a traced decomposition instead of the kernels).
    """
    path = Path(path)
    module = module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False, strict=False)
    traced.save(str(path))
    missing = [op for op in CUSTOM_OPS if op not in graph_ops(path)]
    if missing:
        raise ValueError(f"TorchScript {path}: the traced graph does not call {', '.join(missing)}")


def load_torchscript(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load a TorchScript artifact onto ``device`` in eval mode."""
    module = torch.jit.load(str(path), map_location=device)
    return module.eval()


def _nodes(path: str | Path):
    """Every node of the saved module's forward graph, submodule calls inlined, nested blocks included."""
    module = torch.jit.load(str(Path(path)), map_location="cpu")

    def walk(block):
        for node in block.nodes():
            yield node
            for sub in node.blocks():
                yield from walk(sub)

    return list(walk(module.inlined_graph))


def graph_ops(path: str | Path) -> set[str]:
    """Kinds of every node of the saved module's forward graph, submodule calls inlined
    (e.g. ``aten::linear``, ``spectramind::selective_scan``)."""
    return {node.kind() for node in _nodes(path)}


def baked_devices(path: str | Path) -> dict[str, list[str]]:
    """Device constants of the saved graph -> the ops that use them (e.g. ``{"cpu": ["aten::arange"]}``).

    Empty when the graph takes every device from its inputs and buffers, i.e. runs wherever it is loaded.
    """
    out: dict[str, set[str]] = {}
    for node in _nodes(path):
        if node.kind() == "prim::Constant" and str(node.output().type()) == "Device":
            users = {use.user.kind() for use in node.output().uses()}
            out.setdefault(str(node.output().toIValue()), set()).update(users)
    return {dev: sorted(users) for dev, users in out.items()}
