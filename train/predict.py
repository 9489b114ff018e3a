"""``spectramind predict``: a checkpoint and a light-curve directory in, a submission out.

Eager batch inference of the calibrated model (:class:`spectramind.model.calibration.CalibratedV50`:
the checkpoint's temperature and COREL applied) on the features of every planet of the chosen
splits, built with the feature options the checkpoint was trained with (``meta["features"]``),
so training and inference cannot disagree on the inputs. mu is clipped at 0 (a depth cannot be
negative and the metric rejects negative values). A planet whose features fail is reported and
left out; the rest are written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from spectramind.data.features import options_from_meta
from spectramind.metric import write_submission
from spectramind.model.calibration import CalibratedV50
from train.checkpoints import load_checkpoint
from train.data import FeatureSet, load_features
from train.evaluate import predict_arrays

__all__ = ["predict_checkpoint"]

log = logging.getLogger("spectramind.train")


def predict_checkpoint(
    ckpt_path: Path,
    data_dir: Path,
    out_csv: Path,
    splits: Sequence[str] = ("test",),
    workers: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
) -> list[FeatureSet]:
    """Write ``out_csv`` (planet_id, wl_1..wl_283, sigma_1..sigma_283) for the planets of
    ``splits`` present in ``data_dir``; returns the feature sets it predicted."""
    ckpt_path, data_dir = Path(ckpt_path), Path(data_dir)
    ckpt = load_checkpoint(ckpt_path)
    options = options_from_meta(ckpt.get("meta"), ckpt_path)
    model = CalibratedV50.from_checkpoint(ckpt_path).to(device)
    sets, ids, mus, sigmas = [], [], [], []
    for split in splits:
        if not (data_dir / split).is_dir():
            continue
        fs = load_features(data_dir, split, options, workers=workers, progress=progress)
        for failure in fs.failures:
            log.warning("predict: left out %s: %s", failure.item, failure.error)
        mu, sigma = predict_arrays(model, fs.fgs1, fs.airs_nodes, batch_size, device)
        sets.append(fs)
        ids.extend(int(p) for p in fs.planet_ids)
        mus.append(np.clip(mu, 0.0, None))
        sigmas.append(sigma)
    if not sets:
        raise FileNotFoundError(f"{data_dir}: none of the splits {', '.join(splits)} has planets")
    write_submission(Path(out_csv), ids, np.concatenate(mus), np.concatenate(sigmas))
    return sets
