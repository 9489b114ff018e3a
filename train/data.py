"""Planets of a light-curve directory as model inputs: features (cached), labels, a seeded split.

Every planet of a split becomes a :class:`spectramind.data.features.ModelInputs` through the
one feature definition that export and serve share. The physics-baseline fit inside it costs
~0.3 s a planet, so the arrays of a split are cached in one file per split::

    <cache_dir>/features-v<FEATURES_VERSION>-<options hash>/<split>.npz

(``cache_dir`` defaults to ``LCDIR/.features``). A planet already in the cache is not
recomputed; a planet added to the LCDIR is computed and the cache rewritten. Changing the
feature or baseline options changes the hash, so stale features are never read.

A planet whose features fail (a :class:`PlanetDataError`) is left out and listed in
``FeatureSet.failures``; the rest of the split is kept.

Shapes:
    FeatureSet.fgs1 (N, T, 6), airs_nodes (N, 283, 8) float32; labels (N, 283) float64 in
    (Rp/Rs)^2 (NaN rows when the split has no labels).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from spectramind.bins import N_BINS
from spectramind.data.adc import read_labels, read_star_info
from spectramind.data.errors import PlanetDataError
from spectramind.data.features import FEATURES_VERSION, FeatureOptions, planet_inputs
from spectramind.data.lightcurves import LightCurves, list_lightcurves
from spectramind.data.runner import Failure, run_planets

__all__ = ["FeatureSet", "PlanetDataset", "load_features", "split_planets"]


@dataclass
class FeatureSet:
    """Model inputs (and labels when known) of the planets of one split, in planet-id order."""

    split: str
    planet_ids: np.ndarray
    fgs1: np.ndarray
    airs_nodes: np.ndarray
    labels: np.ndarray
    failures: list[Failure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.planet_ids)

    @property
    def has_labels(self) -> bool:
        return len(self) > 0 and bool(np.isfinite(self.labels).all())

    def subset(self, index: np.ndarray) -> "FeatureSet":
        index = np.asarray(index, dtype=np.int64)
        return FeatureSet(
            self.split, self.planet_ids[index], self.fgs1[index], self.airs_nodes[index], self.labels[index], []
        )


def options_hash(options: FeatureOptions) -> str:
    text = json.dumps(asdict(options), sort_keys=True, default=str)
    return hashlib.sha256(f"{FEATURES_VERSION}:{text}".encode()).hexdigest()[:12]


def _feature_worker(job: tuple[int, tuple[str, ...], dict | None, FeatureOptions]) -> tuple[int, np.ndarray, np.ndarray]:
    pid, paths, star, options = job
    visits = [LightCurves.load(Path(p)) for p in paths]
    if not visits:
        raise PlanetDataError(pid, None, "features: no visit files")
    x = planet_inputs(visits, star, options)
    return pid, x.fgs1, x.airs_nodes


def load_features(
    lcdir: Path,
    split: str,
    options: FeatureOptions,
    cache_dir: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Features of every planet of ``split`` in ``lcdir`` (cached), with labels from ``train.csv``
    when the split is ``train`` and the file exists (NaN otherwise).

    Raises FileNotFoundError naming the directory when the split has no planets.
    """
    lcdir = Path(lcdir)
    planets = list_lightcurves(lcdir, split)
    if not planets:
        raise FileNotFoundError(f"{lcdir / split}: no planets (expected {split}/<planet_id>/visit_<k>.npz)")
    cache_root = Path(cache_dir) if cache_dir is not None else lcdir / ".features"
    cache = cache_root / f"features-v{FEATURES_VERSION}-{options_hash(options)}" / f"{split}.npz"
    known: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if cache.is_file():
        with np.load(cache) as z:
            for i, pid in enumerate(z["planet_ids"].tolist()):
                known[int(pid)] = (z["fgs1"][i], z["airs_nodes"][i])
    stars = read_star_info(lcdir, split) if (lcdir / f"{split}_star_info.csv").is_file() else None
    jobs = []
    for pid, paths in planets.items():
        if pid in known:
            continue
        star = stars.loc[pid].to_dict() if stars is not None and pid in stars.index else None
        jobs.append((pid, tuple(str(p) for p in paths), star, options))
    failures: list[Failure] = []
    if jobs:
        summary = run_planets(_feature_worker, jobs, task=f"features {split}", workers=workers, progress=progress)
        failures = summary.failures
        for pid, fgs1, nodes in summary.results:
            known[pid] = (fgs1, nodes)
        ids = sorted(known)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.stem + ".tmp.npz")
        np.savez(
            tmp,
            planet_ids=np.array(ids, dtype=np.int64),
            fgs1=np.stack([known[p][0] for p in ids]),
            airs_nodes=np.stack([known[p][1] for p in ids]),
        )
        tmp.replace(cache)
    ids = np.array(sorted(p for p in planets if p in known), dtype=np.int64)
    if len(ids) == 0:
        raise PlanetDataError(None, lcdir / split, f"features failed for every planet: {failures[0].error}")
    labels = np.full((len(ids), N_BINS), np.nan)
    label_file = lcdir / f"{split}.csv"
    if label_file.is_file():
        table = read_labels(label_file)
        missing = [int(p) for p in ids if p not in table.index]
        if missing:
            raise PlanetDataError(missing[0], label_file, f"no labels for {len(missing)} planet(s) of {lcdir / split}")
        labels = table.loc[ids].to_numpy(dtype=np.float64)
    return FeatureSet(
        split=split,
        planet_ids=ids,
        fgs1=np.stack([known[int(p)][0] for p in ids]).astype(np.float32),
        airs_nodes=np.stack([known[int(p)][1] for p in ids]).astype(np.float32),
        labels=labels,
        failures=failures,
    )


def split_planets(planet_ids: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) of a seeded split by planet: ``fraction`` of the planets
    (at least one, and at least one left for training) go to validation.

    The permutation is drawn over the sorted planet ids, so the split depends only on the set of
    planets and the seed, not on the order the files were listed in.
    """
    n = len(planet_ids)
    if n < 2:
        raise ValueError(f"need at least 2 labelled planets to split train/validation, got {n}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"train.validation.fraction must be in (0, 1), got {fraction}")
    order = np.argsort(planet_ids, kind="stable")
    perm = order[np.random.default_rng(seed).permutation(n)]
    n_val = min(n - 1, max(1, int(round(fraction * n))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class PlanetDataset(Dataset):
    """(fgs1, airs_nodes, labels) tensors of a :class:`FeatureSet`, one planet an item."""

    def __init__(self, features: FeatureSet) -> None:
        self.fgs1 = torch.from_numpy(features.fgs1)
        self.nodes = torch.from_numpy(features.airs_nodes)
        self.labels = torch.from_numpy(features.labels.astype(np.float32))

    def __len__(self) -> int:
        return self.fgs1.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.fgs1[i], self.nodes[i], self.labels[i]
