"""The Hydra configs compose, keep the seed's numbers, and fail loudly on bad overrides."""

from __future__ import annotations

import functools
import re

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from spectramind.config import CONFIG_DIR, compose, config_hash, split_overrides, to_container
from spectramind.data.lightcurves import Binning

MODEL_PRESETS = ("base", "small", "medium", "large")
TRAIN_PRESETS = ("base", "local", "kaggle", "fast_smoke", "ablation")
ENV_VARS = ("SM_SEED", "SM_DTYPE", "SM_DATA", "SM_LIGHTCURVES", "MLFLOW_ON", "MLFLOW_TRACKING_URI", "GIT_COMMIT")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


# Seed numbers per preset, as dotted paths under cfg.model / cfg.train. Every pair of presets is
# checked against both tables, so a train preset cannot disturb the model and vice versa.
MODEL_GOLDEN: dict[str, dict[str, object]] = {
    "base": {
        "encoders.fgs1_mamba.d_model": 256,
        "encoders.fgs1_mamba.d_state": 64,
        "encoders.fgs1_mamba.n_layers": 8,
        "encoders.airs_gnn.heads": 4,
        "fusion.dim": 512,
        "losses.symbolic.smoothness.lambda": 0.1,
        "losses.regularization.weight_decay": 0.01,
    },
    "small": {
        "encoders.fgs1_mamba.d_model": 128,
        "encoders.fgs1_mamba.d_state": 32,
        "encoders.fgs1_mamba.n_layers": 4,
        "encoders.airs_gnn.heads": 2,
        "fusion.dim": 256,
        "decoders.sigma_head.hidden": 128,
        "losses.symbolic.smoothness.lambda": 0.05,
        "losses.symbolic.nonnegativity.lambda": 0.02,
        "calibration.enable": True,
    },
    "medium": {
        "encoders.fgs1_mamba.d_model": 192,
        "encoders.fgs1_mamba.d_state": 48,
        "encoders.airs_gnn.n_layers": 3,
        "fusion.dim": 384,
        "losses.symbolic.smoothness.lambda": 0.1,
    },
    "large": {
        "encoders.fgs1_mamba.d_model": 320,
        "encoders.fgs1_mamba.d_state": 96,
        "encoders.fgs1_mamba.n_layers": 10,
        "encoders.airs_gnn.heads": 6,
        "fusion.dropout": 0.15,
        "losses.regularization.weight_decay": 0.02,
    },
}
TRAIN_GOLDEN: dict[str, dict[str, object]] = {
    "base": {
        "optimizer.lr": 2.0e-4,
        "scheduler.warmup_steps": 2000,
        "curriculum.phases": ["mae", "contrastive", "supervised"],
        "curriculum.mae.optimizer.lr": 3.0e-4,
        "calibration.temperature.max_iters": 500,
    },
    "local": {"batch.workers": 12, "batch.prefetch_factor": 3, "optimizer.lr": 2.0e-4},
    "kaggle": {
        "optimizer.lr": 1.6e-4,
        "optimizer.betas": [0.9, 0.95],
        "scheduler.warmup_steps": 1500,
        "scheduler.min_lr": 1.0e-6,
        "batch.train": 24,
        "checkpoints.keep": 2,
        "runtime_guardrails.fast_kaggle_mode": True,
        "logging.mlflow.enable": False,
        "logging.mlflow.experiment": "spectramind_v50",
        "calibration.run_after_supervised": True,
    },
    "fast_smoke": {
        "epochs": {"mae": 1, "contrastive": 0, "supervised": 2},
        "curriculum.phases": ["mae", "supervised"],
        "batch.train": 8,
        "batch.pin_memory": True,
        "checkpoints.keep": 1,
        "validation.interval_steps": 2000,
    },
    "ablation": {
        "ablate.max_runs": 32,
        "ablate.export.zip_dir": "outputs/ablate/topn_bundles",
        "logging.mlflow.experiment": "spectramind_v50_ablate",
        "optimizer.lr": 2.0e-4,
    },
}
# Overrides of keys no golden table pins, applied to every pair.
GRID_OVERRIDES = (
    "model.encoders.fgs1_mamba.d_conv=3",
    "model.losses.symbolic.seam_continuity.lambda=0.3",
    "train.batch.eval=5",
)


@functools.lru_cache(maxsize=None)
def _grid(model: str, train: str) -> DictConfig:
    """A preset pair with GRID_OVERRIDES (environment cleared); shared by the tests that only read it."""
    return compose([f"model={model}", f"train={train}", *GRID_OVERRIDES])


def _check_golden(node: DictConfig, golden: dict[str, object], where: str) -> None:
    for key, expected in golden.items():
        actual = OmegaConf.select(node, key)
        actual = OmegaConf.to_container(actual) if isinstance(actual, (DictConfig, ListConfig)) else actual
        if isinstance(expected, float):
            assert actual == pytest.approx(expected), f"{where}.{key}"
        else:
            assert actual == expected, f"{where}.{key}"


@pytest.mark.parametrize("train", TRAIN_PRESETS)
@pytest.mark.parametrize("model", MODEL_PRESETS)
def test_every_preset_pair_composes_with_overrides(model: str, train: str) -> None:
    cfg = _grid(model, train)
    assert sorted(cfg) == ["data", "explainability", "model", "presets", "symbolic", "train"]
    _check_golden(cfg.model, MODEL_GOLDEN[model], f"model={model}")
    _check_golden(cfg.train, TRAIN_GOLDEN[train], f"train={train}")
    assert cfg.model.encoders.fgs1_mamba.d_conv == 3
    assert cfg.train.batch.eval == 5
    # Interpolations follow the overridden model, not the file they came from.
    assert cfg.train.supervised_objective.symbolic.seam_continuity["lambda"] == pytest.approx(0.3)
    assert cfg.train.optimizer.weight_decay == cfg.model.losses.regularization.weight_decay
    assert cfg.train.amp is cfg.model.amp is True
    assert cfg.train.precision == cfg.model.precision == "fp16"
    assert cfg.train.seed == cfg.model.seed == 1337
    assert cfg.model.encoders.airs_gnn.graph.seam_index == 178
    # Presets override, they do not prune: keys only base sets survive in every preset.
    assert cfg.model.decoders.sigma_head.quantile.q_list == [0.1, 0.5, 0.9]
    assert cfg.model.losses.symbolic.ratio_envelopes.pairs == [["CH4", "H2O"], ["CO2", "H2O"]]
    assert cfg.model.encoders.airs_gnn.positional_encoding.kind == "fourier"
    assert cfg.model.fusion.cross_attend.n_heads == 4
    assert cfg.train.data_augmentation.fgs1.jitter_std == pytest.approx(0.25)
    assert "${" not in OmegaConf.to_yaml(cfg)


def test_command_line_beats_preset_and_reaches_interpolations() -> None:
    cfg = compose(
        [
            "model=small",
            "train=kaggle",
            "train.optimizer.lr=1e-3",
            "model.encoders.fgs1_mamba.d_model=64",
            "model.losses.regularization.weight_decay=0.5",
            "model.fusion=${presets.fusion.gated}",
        ]
    )
    assert cfg.train.optimizer.lr == pytest.approx(1e-3)
    assert cfg.model.encoders.fgs1_mamba.d_model == 64
    assert cfg.train.optimizer.weight_decay == pytest.approx(0.5)
    assert cfg.model.fusion == cfg.presets.fusion.gated
    assert cfg.model.fusion.kind == "gated"


def test_ablation_search_space_points_at_real_keys() -> None:
    cfg = _grid("medium", "ablation")
    space = cfg.train.ablate.search_space
    assert set(space) == {
        "optimizer.lr",
        "model.encoders.fgs1_mamba.n_layers",
        "model.encoders.airs_gnn.n_layers",
        "model.fusion.kind",
        "model.decoders.sigma_head.type",
        "model.losses.symbolic.smoothness.lambda",
    }
    assert space["model.fusion.kind"] == ["concat", "gated"]
    for key, values in space.items():
        root = cfg if key.startswith("model.") else cfg.train
        current = OmegaConf.select(root, key)
        assert current is not None, key
        assert all(type(v) is type(current) for v in values), key
    for flag in cfg.train.cli.expose_flags:
        assert OmegaConf.select(cfg.train, flag) is not None, flag


def test_shared_blocks_and_data_are_mounted() -> None:
    cfg = _grid("base", "base")
    assert cfg.symbolic == OmegaConf.load(CONFIG_DIR / "model" / "symbolic_profiles.yaml")
    assert cfg.explainability.shap.topk_bins == 24
    assert cfg.explainability.export_dir == "outputs/explainability"
    assert set(cfg.presets.fusion) == {"concat", "cross_attend", "gated"}
    assert cfg.presets.fusion.cross_attend.cross_attend.n_layers == 1
    assert cfg.presets.decoders.sigma_flow_default.sigma_min == pytest.approx(1.0e-4)
    for name in ("simulate", "calibrate", "baseline"):
        # Keys only: those files belong to their stages and may interpolate.
        assert set(cfg.data[name]) == set(OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")), name
    assert cfg.data.binning.fgs1_seconds == Binning().fgs1_seconds
    assert cfg.data.binning.airs_seconds == Binning().airs_seconds
    assert cfg.data.wavelengths == "outputs/data/raw/wavelengths.csv"
    assert cfg.model.encoders.airs_gnn.graph.wavelength_csv == cfg.data.wavelengths


def test_environment_drives_interpolations(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = _grid("base", "local")
    assert defaults.model.seed == 1337
    assert defaults.train.logging.mlflow.enable is False
    assert defaults.train.logging.mlflow.tracking_uri == ""
    assert defaults.train.reproducibility.capture.git_sha == "unknown"

    monkeypatch.setenv("SM_SEED", "7")
    monkeypatch.setenv("SM_DTYPE", "bf16")
    monkeypatch.setenv("MLFLOW_ON", "true")
    monkeypatch.setenv("SM_DATA", "/tmp/adc2025")
    monkeypatch.setenv("GIT_COMMIT", "abc123")
    cfg = compose(["model=base", "train=local", *GRID_OVERRIDES])
    assert cfg.model.seed == 7 and cfg.train.seed == 7
    assert cfg.model.precision == cfg.train.precision == "bf16"
    assert cfg.train.logging.mlflow.enable is True
    assert cfg.model.encoders.airs_gnn.graph.wavelength_csv == "/tmp/adc2025/wavelengths.csv"
    assert cfg.train.logging.mlflow.tags.repo_sha == "abc123"
    assert config_hash(cfg) != config_hash(defaults)


def test_standalone_calibration_preset() -> None:
    cfg = compose(["train=calibration"])
    assert set(cfg.train) == {"temperature", "corel"}
    assert cfg.train.temperature.max_iters == 800
    assert cfg.train.corel.epochs == 30
    assert cfg.train.corel.optimizer.name == "adamw"


@pytest.mark.parametrize(
    ("overrides", "culprit", "hint"),
    [
        # The shared files in configs/model (symbolic_profiles, ...) are not offered as presets.
        (["model=tiny"], "model=tiny", "available presets: base, large, medium, small"),
        (["model=small", "train=nope"], "train=nope", "fast_smoke"),
        (["model=small", "model.encoders.fgs1_mamba.nope=1"], "model.encoders.fgs1_mamba.nope=1", "+model"),
        (["train.optimizer.lr=1e-3", "train.batch=[1,"], "train.batch=[1,", ""),
    ],
)
def test_bad_override_raises_value_error_naming_it(overrides: list[str], culprit: str, hint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(culprit))) as info:
        compose(overrides)
    assert hint in str(info.value)
    assert "symbolic_profiles" not in str(info.value)


def test_compose_survives_an_initialised_global_hydra() -> None:
    GlobalHydra.instance().clear()
    initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR))
    try:
        assert compose(["model=small"]).model.encoders.fgs1_mamba.d_model == 128
    finally:
        GlobalHydra.instance().clear()


def test_config_hash_and_container() -> None:
    cfg = _grid("base", "base")
    digest = config_hash(cfg)
    assert re.fullmatch(r"[0-9a-f]{12}", digest)
    assert digest == config_hash(OmegaConf.create(OmegaConf.to_yaml(cfg)))
    assert digest != config_hash(_grid("small", "fast_smoke"))

    plain = to_container(cfg)
    assert type(plain) is dict and type(plain["model"]) is dict
    assert plain["model"]["encoders"]["airs_gnn"]["graph"]["seam_index"] == 178
    assert OmegaConf.create(plain) == cfg


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["model=small", "train=kaggle"], (["model=small", "train=kaggle"], [])),
        (["--out", "runs/a", "model=small"], (["model=small"], ["--out", "runs/a"])),
        (["--out=runs/a", "train.optimizer.lr=1e-3"], (["train.optimizer.lr=1e-3"], ["--out=runs/a"])),
        (
            ["+model.extra=1", "++x.y=2", "~model.jit_export", "-v"],
            (["+model.extra=1", "++x.y=2", "~model.jit_export"], ["-v"]),
        ),
        (
            ["train", "hydra/launcher=basic", "data@data.binning=binning"],
            (["hydra/launcher=basic", "data@data.binning=binning"], ["train"]),
        ),
        (
            ["model.fusion=${presets.fusion.gated}", "a b=c", "=x", "http://h=1"],
            (["model.fusion=${presets.fusion.gated}"], ["a b=c", "=x", "http://h=1"]),
        ),
        ([], ([], [])),
    ],
)
def test_split_overrides(argv: list[str], expected: tuple[list[str], list[str]]) -> None:
    assert split_overrides(argv) == expected
