"""``python -m serve.examples.make_sample``: write ``serve/examples/sample_request.json``.

One simulated planet (seed 2024, light-curve level, the default cadence of
``configs/data/binning.yaml``: FGS1 60 s, AIRS 240 s) binned coarsely so the file stays small
(< 300 KB) and still carries a resolved transit: FGS1 by 4 (about 112 time bins), AIRS by 2
(about 56 time bins for each of the 282 series). Values are rounded to 7 significant digits
(float32 precision). The body is what ``POST /predict`` takes::

    {"planet_id": int,
     "fgs1": {"flux": [T_f], "time_h": [T_f], "centroid": [[x, y]] * T_f, "jitter": [[x, y]] * T_f},
     "airs": {"flux": [[T_a]] * 282, "time_h": [T_a]},
     "star": {"Rs": ..., "Ms": ..., "Ts": ..., "Mp": ..., "e": ..., "P": ..., "sma": ..., "i": ...}}

Centroids and jitter are recomputed after binning with the light-curve format's own definition
(:func:`spectramind.data.lightcurves.fgs1_feature_matrix`). The planet's true spectrum is not in the
request; ``--truth PATH`` writes it beside (planet_id, wl_1..wl_283) for checking an answer.
Deterministic: the same code writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spectramind.data.lightcurves import Binning, LightCurves, bin_mean, fgs1_feature_matrix, visit_path
from spectramind.data.simulate import SimulateOptions, simulate_dataset

__all__ = ["SAMPLE", "FGS1_FACTOR", "AIRS_FACTOR", "build_request", "main"]

SAMPLE = Path(__file__).with_name("sample_request.json")
SEED = 2024
FGS1_FACTOR = 4
AIRS_FACTOR = 2
_DIGITS = 7


def _r(x: np.ndarray) -> list:
    """Nested lists of floats rounded to 7 significant digits (shortest repr in JSON)."""
    return np.vectorize(lambda v: float(f"{v:.{_DIGITS}g}"), otypes=[object])(np.asarray(x, np.float64)).tolist()


def build_request(lc: LightCurves, star: dict[str, float]) -> dict:
    """A /predict body from one visit's light curves, binned by FGS1_FACTOR / AIRS_FACTOR.

    Shapes: lc.fgs1 (T_f, 6), lc.airs_flux (282, T_a) -> fgs1.flux (T_f // 4,), airs.flux (282, T_a // 2).
    """
    f_time = bin_mean(lc.fgs1_time_h.astype(np.float64), FGS1_FACTOR)
    f_flux = bin_mean(lc.fgs1[:, 0].astype(np.float64), FGS1_FACTOR)
    # fgs1 columns 2, 3 are the centroid offsets; jitter is derived from them after binning.
    cx = bin_mean(lc.fgs1[:, 2].astype(np.float64), FGS1_FACTOR)
    cy = bin_mean(lc.fgs1[:, 3].astype(np.float64), FGS1_FACTOR)
    feats = fgs1_feature_matrix(f_flux, f_time, cx, cy)
    a_time = bin_mean(lc.airs_time_h.astype(np.float64), AIRS_FACTOR)
    a_flux = bin_mean(lc.airs_flux.astype(np.float64), AIRS_FACTOR, axis=1)
    return {
        "planet_id": int(lc.planet_id),
        "fgs1": {"flux": _r(f_flux), "time_h": _r(f_time), "centroid": _r(feats[:, 2:4]), "jitter": _r(feats[:, 4:6])},
        "airs": {"flux": _r(a_flux), "time_h": _r(a_time)},
        "star": {k: float(f"{float(v):.{_DIGITS}g}") for k, v in star.items()},
    }


def dumps(body: dict) -> str:
    """Compact JSON with one AIRS series a line (small, and diffs stay readable)."""
    rows = ",\n".join(json.dumps(r, separators=(",", ":")) for r in body["airs"]["flux"])
    head = {k: v for k, v in body.items() if k != "airs"}
    text = json.dumps(head, separators=(",", ":"))[:-1]
    return (f'{text},\n"airs":{{"time_h":{json.dumps(body["airs"]["time_h"], separators=(",", ":"))},'
            f'\n"flux":[\n{rows}]}}}}\n')


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=SAMPLE)
    ap.add_argument("--truth", type=Path, default=None, help="also write the planet's true spectrum (CSV)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="spectramind-sample-") as tmp:
        root = Path(tmp) / "lc"
        options = SimulateOptions(n_planets=1, seed=SEED, level="lightcurves", n_test=0)
        simulate_dataset(root, options, binning=Binning(), workers=1, progress=False)
        stars = pd.read_csv(root / "train_star_info.csv")
        pid = int(stars["planet_id"].iloc[0])
        lc = LightCurves.load(visit_path(root, "train", pid, 0))
        star = {k: float(v) for k, v in stars.iloc[0].items() if k != "planet_id"}
        body = build_request(lc, star)
        if args.truth is not None:
            pd.read_csv(root / "train.csv").to_csv(args.truth, index=False)
    text = dumps(body)
    json.loads(text)  # the layout above is hand-joined: prove it parses before writing
    args.out.write_text(text)
    n_f, n_a = len(body["fgs1"]["flux"]), len(body["airs"]["time_h"])
    print(f"{args.out}: planet {body['planet_id']}, fgs1 {n_f} bins, airs 282 x {n_a} bins, {len(text) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
