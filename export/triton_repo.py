"""A Triton Inference Server model repository of the ONNX artifact (``--formats triton-repo``).

Layout, inside the artifact directory::

    triton/
      spectramind/              the model (MODEL_NAME)
        config.pbtxt            platform onnxruntime_onnx, dynamic batching
        1/model.onnx            a copy of the artifact's ONNX file (version 1)

Point a Triton server at ``NAME/triton`` (``tritonserver --model-repository NAME/triton``).
``max_batch_size`` is the largest batch bucket and ``dynamic_batching`` prefers the buckets, so
the server batches as the export checked (parity holds at exactly those sizes). Triton's
``dims`` exclude the batch axis: fgs1 [T, 6], airs_nodes [283, 8], mu and sigma [283].

Shapes: as the ONNX model (fgs1 (batch, T, 6), airs_nodes (batch, 283, 8) -> mu, sigma (batch, 283)).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from spectramind.bins import N_BINS

__all__ = ["MODEL_NAME", "config_pbtxt", "write_triton_repo"]

MODEL_NAME = "spectramind"
MAX_QUEUE_DELAY_US = 1000


def config_pbtxt(fgs1_steps: int, buckets: Sequence[int], name: str = MODEL_NAME) -> str:
    """The ``config.pbtxt`` text (protobuf text format) of the model."""
    if not buckets or min(buckets) < 1:
        raise ValueError(f"triton-repo: batch buckets must be positive integers, got {list(buckets)}")
    sizes = sorted({int(b) for b in buckets})

    def tensor(tname: str, dims: Sequence[int]) -> str:
        return f'  {{\n    name: "{tname}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'

    inputs = ",\n".join([tensor("fgs1", (fgs1_steps, 6)), tensor("airs_nodes", (N_BINS, 8))])
    outputs = ",\n".join([tensor("mu", (N_BINS,)), tensor("sigma", (N_BINS,))])
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {sizes[-1]}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, sizes))} ]\n"
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n"
        "}\n"
    )


def write_triton_repo(onnx_path: str | Path, artifact_dir: str | Path, fgs1_steps: int, buckets: Sequence[int],
                      name: str = MODEL_NAME) -> Path:
    """Write ``artifact_dir/triton/<name>/{config.pbtxt, 1/model.onnx}``; returns the model directory."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ValueError(f"triton-repo: the ONNX file {onnx_path} does not exist (triton-repo needs the onnx format)")
    model_dir = Path(artifact_dir) / "triton" / name
    (model_dir / "1").mkdir(parents=True, exist_ok=False)
    (model_dir / "config.pbtxt").write_text(config_pbtxt(fgs1_steps, buckets, name))
    shutil.copyfile(onnx_path, model_dir / "1" / "model.onnx")
    return model_dir
