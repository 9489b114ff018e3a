"""Whether the model is being captured into a graph rather than run.

Shape and value checks at layer boundaries read tensor sizes and data; under
``torch.jit.trace`` they would freeze the example's shapes into the graph, and under
``torch.export`` / ``torch.onnx.export(dynamo=True)`` reading data (``int(t.min())``) cannot be
captured at all. Every such check is guarded by :func:`capturing`; export runs the model once
eagerly first, so the checks still apply to its inputs.
"""

from __future__ import annotations

import torch

__all__ = ["capturing"]


def capturing() -> bool:
    """True under ``torch.jit.trace`` and under torch.export / dynamo capture."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()
