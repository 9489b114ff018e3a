"""Checkpoint -> artifact: TorchScript, ONNX, manifest with hashes and golden planets, parity report.

``spectramind-export --ckpt best.pt --out artifacts/NAME`` (:mod:`export.cli`) writes the directory
the server loads. One idea per module:

- :mod:`export.module`: :class:`~export.module.ExportModule` (the calibrated model returning
  ``(mu, sigma)``) and :func:`~export.module.load_for_export` (``weights_only`` checkpoint reading,
  one-line errors);
- :mod:`export.torchscript`: ``torch.jit.trace`` that keeps ``spectramind::selective_scan`` and
  ``spectramind::gat_attention`` as named calls; :func:`~export.torchscript.graph_ops`;
- :mod:`export.onnx_export`: ONNX with the custom operators translated to standard ONNX;
- :mod:`export.parity`: eager vs TorchScript vs ONNX Runtime at every batch bucket;
- :mod:`spectramind.artifact`: ``manifest.json``, golden planets, :func:`~spectramind.artifact.verify_artifact`;
- :mod:`export.triton_repo`: a Triton Inference Server model repository of the ONNX file.

Only :mod:`export.cli` imports ``triton_kernels`` (the entry point registers the CUDA kernels);
the library modules import ``spectramind`` and never the reverse.
"""
