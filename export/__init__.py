"""Checkpoint -> artifact (TorchScript, ONNX, manifest, parity). Arrives with the export issue."""
