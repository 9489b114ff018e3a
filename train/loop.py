"""The training loop: one function, :func:`run_training`, read top to bottom.

1. set up: distributed (``torchrun`` env), device and precision, seeds and determinism, the run
   logger, the runtime guardrail;
2. data: features of the labelled planets of LCDIR (cached), a seeded split by planet
   (``train.validation.fraction``);
3. model: :class:`SpectraMindV50` from the composed config, inside the :class:`PhaseObjective`
   that DDP wraps;
4. the curriculum: for each phase of ``curriculum.phases`` with ``epochs[phase] > 0`` a fresh
   AdamW (``curriculum.mae.optimizer.lr`` for MAE, ``optimizer.lr`` otherwise) and cosine schedule,
   epochs of shuffled batches with gradient accumulation, clipping and AMP, validation every
   ``validation.interval_steps`` optimiser steps and at each epoch end, checkpoints at each epoch
   end, early stopping on the monitored metric (supervised phase);
5. calibration (temperature + COREL) of the best model on the validation planets, stored in the
   checkpoints;

The runtime guardrail (``runtime_guardrails``) stops training once the run exceeds its budget,
with last.pt saved at the exact batch; with ``assert_on_overrun`` the run then raises
:class:`train.guardrail.RuntimeOverrun`, otherwise it goes on to calibration and the submission;
6. optionally the submission of the LCDIR's test planets (``submission.pack_on_finish``).

Resume (``train.resume.enable`` and ``train.resume.ckpt_path``) restores the model, the
optimiser, the scheduler, the RNGs, the phase, epoch and batch position: the data order of an
epoch is a function of (seed, phase, epoch), so a resumed run sees the batches the stopped run
would have seen. Paths of ``train.checkpoints.dir`` and the logs are relative to the run
directory.
"""

from __future__ import annotations

import json
import math
import os
import platform
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

import triton_kernels  # noqa: F401  (registers the CUDA kernels of the ops: training on a GPU runs them)
from spectramind.bins import grid_from_profile
from spectramind.config import config_hash, to_container
from spectramind.data.features import FEATURES_VERSION, FeatureOptions
from spectramind.model.v50 import SpectraMindV50, model_config_from
from train.checkpoints import CheckpointManager, EarlyStopping, load_checkpoint, rng_state, set_rng_state
from train.data import PlanetDataset, load_features, split_planets
from train.evaluate import naive_from_labels, predict_arrays, validation_metrics
from train.guardrail import RuntimeGuardrail
from train.logs import RunLogger, git_sha
from train.objectives import PHASES, PhaseObjective
from train.optim import build_optimizer, build_scheduler

__all__ = ["TrainResult", "run_training"]

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class TrainResult:
    run_dir: Path
    best_ckpt: Path | None
    last_ckpt: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    stopped: str = "completed"  # completed | early_stopping | guardrail
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained model (this rank's replica)

    def summary(self) -> dict[str, Any]:
        return {
            **self.metrics,
            "best_ckpt": str(self.best_ckpt) if self.best_ckpt else None,
            "last_ckpt": str(self.last_ckpt) if self.last_ckpt else None,
            "steps": self.steps,
            "stopped": self.stopped,
        }


class EpochSampler(Sampler[int]):
    """Indices of one epoch: a permutation drawn from (seed, phase, epoch), this rank's shard,
    from batch ``skip`` on (resume)."""

    def __init__(self, n: int, seed: int, rank: int, world: int) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.phase, self.epoch, self.skip = 0, 0, 0

    def set_epoch(self, phase: int, epoch: int, skip: int = 0) -> None:
        self.phase, self.epoch, self.skip = phase, epoch, skip

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.phase * 10_007 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = len(perm) // self.world
        return perm[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.skip :])

    def __len__(self) -> int:
        return max(0, self.n // self.world - self.skip)


def _setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = device_pref.startswith("cuda") and torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _resolve(run_dir: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else run_dir / p


def _env_snapshot(cfg: DictConfig) -> dict[str, Any]:
    names = ("torch", "torch-geometric", "numpy", "hydra-core", "omegaconf", "triton", "mlflow-skinny", "captum")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    capture = to_container(cfg.train.reproducibility.capture) if "capture" in cfg.train.reproducibility else {}
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions, **capture}


def run_training(
    cfg: DictConfig, data_dir: Path, run_dir: Path, workers: int | None = None, progress: bool = True
) -> TrainResult:
    """Train, validate, checkpoint and calibrate per ``cfg`` (a composed root config) on the
    labelled planets of the light-curve directory ``data_dir``; everything goes to ``run_dir``."""
    tc = cfg.train
    run_dir = Path(run_dir)
    rank, world, device = _setup_distributed(str(tc.device))
    is_main = rank == 0

    # ------------------------------------------------------------------ reproducibility
    seed = int(tc.seed)
    torch.manual_seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    if bool(cfg.model.deterministic):
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = bool(cfg.model.cudnn_benchmark) and not bool(cfg.model.deterministic)

    with RunLogger(run_dir, tc.logging, cfg, rank=rank) as logger:
        log = logger.log
        precision = str(tc.precision)
        if precision not in AMP_DTYPES:
            raise ValueError(f"train.precision must be one of {', '.join(AMP_DTYPES)}, got {precision!r}")
        amp_on = bool(tc.amp) and precision != "fp32" and device.type == "cuda"
        if bool(tc.amp) and precision != "fp32" and device.type != "cuda":
            log.info("AMP %s requested but the device is %s: training in fp32", precision, device)
        if str(tc.device).startswith("cuda") and device.type != "cuda":
            log.info("train.device %s is not available: using cpu", tc.device)
        amp_dtype = AMP_DTYPES[precision]
        scaler = torch.amp.GradScaler("cuda", enabled=amp_on and amp_dtype == torch.float16)
        guard = RuntimeGuardrail.from_config(tc.runtime_guardrails)
        if is_main and bool(tc.reproducibility.save_env_snapshot):
            (run_dir / "env.json").write_text(json.dumps(_env_snapshot(cfg), indent=2, default=str))

        # ------------------------------------------------------------------ data
        feat_opts = FeatureOptions.from_config(cfg)
        if is_main:
            features = load_features(data_dir, "train", feat_opts, workers=workers, progress=progress and is_main)
        _barrier(world)
        if not is_main:
            features = load_features(data_dir, "train", feat_opts, workers=1, progress=False)
        for failure in features.failures:
            log.warning("features: left out %s: %s", failure.item, failure.error)
        if not features.has_labels:
            raise ValueError(f"{data_dir}: the train split has no labels (train.csv)")
        train_idx, val_idx = split_planets(features.planet_ids, float(tc.validation.fraction), seed)
        train_set, val_set = features.subset(train_idx), features.subset(val_idx)
        naive = naive_from_labels(train_set.labels)
        log.info("data: %d planets (%d train, %d validation) from %s", len(features), len(train_set), len(val_set), data_dir)

        # ------------------------------------------------------------------ model
        model_config = model_config_from(cfg)
        model = SpectraMindV50(model_config).to(device)
        grid = grid_from_profile(model_config["symbolic"])
        objective = PhaseObjective(model, tc, grid).to(device)
        objective.generator = torch.Generator().manual_seed(seed * 7919 + rank)
        wrapped: torch.nn.Module = objective
        if world > 1:
            wrapped = DistributedDataParallel(
                objective, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
            )
        log.info("model: %s, %d parameters, device %s, world %d", cfg.model.name, model.parameter_count(), device, world)

        batch_cfg = tc.batch
        batch_size = int(batch_cfg.train)
        per_rank = len(train_set) // world
        if per_rank < batch_size:
            log.warning("batch.train %d > %d training planets per rank: using %d", batch_size, per_rank, max(1, per_rank))
            batch_size = max(1, per_rank)
        sampler = EpochSampler(len(train_set), seed, rank, world)
        n_workers = int(batch_cfg.workers)
        loader = DataLoader(
            PlanetDataset(train_set),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=n_workers,
            pin_memory=bool(batch_cfg.pin_memory) and device.type == "cuda",
            prefetch_factor=int(batch_cfg.prefetch_factor) if n_workers > 0 else None,
            persistent_workers=bool(batch_cfg.persistent_workers) and n_workers > 0,
            drop_last=bool(batch_cfg.drop_last),
            # Its own generator: a loader draws a base seed from the global RNG at every epoch
            # start, which would shift dropout's random stream after a mid-epoch resume.
            generator=torch.Generator().manual_seed(seed),
        )
        accum = int(tc.grad.accumulate_steps)
        if accum < 1:
            raise ValueError(f"train.grad.accumulate_steps must be >= 1, got {accum}")

        ckpt_cfg = tc.checkpoints
        es_cfg = tc.early_stopping
        monitor = str(ckpt_cfg.save_best_on)
        mode = str(es_cfg.mode) if str(es_cfg.monitor) == monitor else ("max" if monitor.endswith("score") else "min")
        manager = CheckpointManager(
            _resolve(run_dir, str(ckpt_cfg.dir)), monitor, mode, bool(ckpt_cfg.save_last),
            int(ckpt_cfg.interval_epochs), int(ckpt_cfg.keep),
        )
        stopper = EarlyStopping(str(es_cfg.monitor), str(es_cfg.mode), int(es_cfg.patience), bool(es_cfg.enable))

        phases = [str(p) for p in tc.curriculum.phases] if bool(tc.curriculum.enable) else ["supervised"]
        for p in phases:
            if p not in PHASES:
                raise ValueError(f"train.curriculum.phases: unknown phase {p!r}; phases are {', '.join(PHASES)}")
        if not bool(tc.curriculum.contrastive.enable):
            phases = [p for p in phases if p != "contrastive"]
        phases = [p for p in phases if int(tc.epochs.get(p, 0)) > 0]
        metric_names = [str(m) for m in tc.validation.metrics]
        interval = int(tc.validation.interval_steps)

        # ------------------------------------------------------------------ resume
        start = {"phase": 0, "epoch": 0, "batch": 0, "step": 0}
        opt_state = sched_state = None
        ckpt_path = tc.resume.ckpt_path
        if bool(tc.resume.enable) and ckpt_path:
            ckpt = load_checkpoint(Path(str(ckpt_path)), map_location=device)
            if ckpt["model_config"] != model_config:
                raise ValueError(f"resume: {ckpt_path} was trained with another model config than this run's")
            model.load_state_dict(ckpt["model"])
            ts = ckpt.get("train_state")
            if ts is None:
                log.warning("resume: %s has no train_state; starting the curriculum from the top with its weights", ckpt_path)
            else:
                objective.load_state_dict(ts["objective"])
                start = {k: int(ts[k]) for k in start}
                opt_state, sched_state = ts["optimizer"], ts["scheduler"]
                manager.load_state_dict(ts["checkpoint_manager"])
                stopper.load_state_dict(ts["early_stopping"])
                set_rng_state(ts["rng"])
                objective.generator.set_state(ts["generator"])
                log.info("resume: %s at phase %d epoch %d batch %d step %d", ckpt_path, *start.values())

        def evaluate() -> dict[str, float]:
            mu, sigma = predict_arrays(model, val_set.fgs1, val_set.airs_nodes, int(batch_cfg.eval), device)
            return validation_metrics(val_set.labels, mu, sigma, metric_names, naive)

        meta_base = {
            "git_sha": git_sha(),
            "config_hash": config_hash(cfg),
            "config": to_container(cfg),
            "features_version": FEATURES_VERSION,
            "features": json.loads(json.dumps(asdict(feat_opts), default=str)),
            "naive": list(naive),
            "data": str(data_dir),
            "val_planets": [int(p) for p in val_set.planet_ids],
        }

        def state(phase_i: int, epoch: int, batch: int, step: int, optimizer, scheduler, metrics) -> dict:
            ck = model.checkpoint(meta={**meta_base, "phase": phases[phase_i] if phases else None,
                                        "epoch": epoch, "step": step, "metrics": metrics})
            ck["train_state"] = {
                "phase": phase_i, "epoch": epoch, "batch": batch, "step": step,
                "objective": {k: v.detach().cpu() for k, v in objective.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "early_stopping": stopper.state_dict(), "rng": rng_state(),
                "generator": objective.generator.get_state(),
            }
            return ck

        # ------------------------------------------------------------------ the curriculum
        step = start["step"]
        stopped = "completed"
        metrics: dict[str, float] = {}
        epochs_done = 0
        for phase_i in range(start["phase"], len(phases)):
            phase = phases[phase_i]
            n_epochs = int(tc.epochs[phase])
            lr = float(tc.curriculum.mae.optimizer.lr) if phase == "mae" else float(tc.optimizer.lr)
            optimizer = build_optimizer(wrapped.named_parameters(), tc.optimizer, lr)
            per_epoch = len(train_set) // world
            batches = per_epoch // batch_size if bool(batch_cfg.drop_last) else math.ceil(per_epoch / batch_size)
            steps_per_epoch = max(1, math.ceil(batches / accum))
            scheduler = build_scheduler(optimizer, tc.scheduler, lr, n_epochs * steps_per_epoch)
            resuming = phase_i == start["phase"] and opt_state is not None
            if resuming:
                optimizer.load_state_dict(opt_state)
                scheduler.load_state_dict(sched_state)
            first_epoch = start["epoch"] if phase_i == start["phase"] else 0
            log.info("phase %s: %d epochs, lr %.3g, %d optimiser steps an epoch", phase, n_epochs, lr, steps_per_epoch)
            for epoch in range(first_epoch, n_epochs):
                skip = start["batch"] if resuming and epoch == first_epoch else 0
                sampler.set_epoch(phase_i, epoch, skip * batch_size)
                objective.train()
                optimizer.zero_grad(set_to_none=True)
                running: dict[str, float] = {}
                n_batches = 0
                batch_i = skip
                with logger.progress(len(loader), f"{phase} epoch {epoch + 1}/{n_epochs}") as bar:
                    for fgs1, nodes, y in loader:
                        fgs1, nodes, y = fgs1.to(device), nodes.to(device), y.to(device)
                        sync = (batch_i + 1) % accum == 0 or batch_i + 1 == skip + len(loader)
                        ctx = wrapped.no_sync() if world > 1 and not sync else nullcontext()
                        with ctx:
                            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_on):
                                loss, terms = wrapped(phase, fgs1, nodes, y)
                            if not torch.isfinite(loss):
                                raise FloatingPointError(f"{phase} epoch {epoch} batch {batch_i}: loss is {float(loss)}")
                            scaler.scale(loss / accum).backward()
                        batch_i += 1
                        n_batches += 1
                        for k, v in {"loss": float(loss.detach()), **terms}.items():
                            running[k] = running.get(k, 0.0) + v
                        bar.advance(1)
                        if not sync:
                            continue
                        scaler.unscale_(optimizer)
                        grad_norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), float(tc.grad.clip_norm))
                        scaler.step(optimizer)
                        scaler.update()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        step += 1
                        if interval > 0 and step % interval == 0 and is_main:
                            metrics = evaluate()
                            logger.metrics(step, metrics, phase)
                        if guard.should_report():
                            logger.event("telemetry", step=step, phase=phase, grad_norm=float(grad_norm), **guard.telemetry())
                        if guard.check():
                            stopped = "guardrail"
                            break
                train_means = {f"train/{k}": v / max(1, n_batches) for k, v in running.items()}
                train_means["train/lr"] = scheduler.get_last_lr()[0]
                metrics = evaluate() if is_main else {}
                epochs_done += 1
                if is_main:
                    logger.metrics(step, {**train_means, **metrics}, phase)
                    log.info(
                        "%s epoch %d/%d step %d: loss %.4g, %s", phase, epoch + 1, n_epochs, step,
                        train_means.get("train/loss", float("nan")),
                        ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
                    )
                finished_epoch = stopped != "guardrail"
                # An epoch cut short by the guardrail is not an epoch for early stopping: the resumed
                # run finishes it and steps the stopper then, as an uninterrupted run would.
                stop_early = (
                    finished_epoch and phase == "supervised" and is_main and stopper.step(metrics[str(es_cfg.monitor)])
                )
                if world > 1:
                    flag = torch.tensor([1.0 if stop_early else 0.0], device=device)
                    dist.broadcast(flag, 0)
                    stop_early = bool(flag.item())
                if is_main:
                    # A finished epoch resumes at the next one; a guardrail stop at the next batch.
                    ck = state(phase_i, epoch + 1 if finished_epoch else epoch, 0 if finished_epoch else batch_i,
                               step, optimizer, scheduler, metrics)
                    if finished_epoch and epoch + 1 == n_epochs:
                        ck["train_state"].update(phase=phase_i + 1, epoch=0)
                    manager.save(ck, epochs_done, metrics)
                _barrier(world)
                if stopped == "guardrail":
                    break
                if stop_early:
                    stopped = "early_stopping"
                    log.info("early stopping: %s did not improve for %d epochs", es_cfg.monitor, int(es_cfg.patience))
                    break
            opt_state = None
            if stopped == "guardrail":
                break

        result = TrainResult(
            run_dir=run_dir,
            best_ckpt=manager.best_path if manager.best_path.is_file() else None,
            last_ckpt=manager.last_path if manager.last_path.is_file() else None,
            metrics=dict(metrics),
            steps=step,
            stopped=stopped,
            model=model,
        )
        if stopped == "guardrail":
            # assert_on_overrun: fail loudly (after saving). Otherwise training stops here and the
            # run still calibrates and packs its submission, which is what a time-boxed run needs.
            logger.event("guardrail", step=step, **guard.telemetry())
            log.error(guard.overrun_message(manager.last_path))
            guard.raise_if_overrun(manager.last_path)

        # ------------------------------------------------------------------ calibration
        cal_cfg = tc.get("calibration")
        if is_main and cal_cfg is not None and bool(cal_cfg.run_after_supervised) and bool(cfg.model.calibration.enable):
            if result.best_ckpt is None:
                log.warning("calibration skipped: no best checkpoint")
            else:
                from train.calibrate import calibrate_validation

                report = calibrate_validation(cfg, result.best_ckpt, val_set, run_dir, device, also=result.last_ckpt)
                result.metrics.update({f"cal/{k}": v for k, v in report.items() if isinstance(v, float)})
                logger.metrics(step, {f"cal/{k}": v for k, v in report.items() if isinstance(v, float)}, "calibration")

        if is_main and bool(tc.submission.pack_on_finish) and result.best_ckpt is not None:
            from train.predict import predict_checkpoint

            out_csv = _resolve(run_dir, str(tc.submission.out_csv))
            predict_checkpoint(result.best_ckpt, data_dir, out_csv, splits=("test",), workers=workers, device=device)
            log.info("submission of the test planets: %s", out_csv)
        logger.event("result", step=step, **{k: v for k, v in result.summary().items() if v is not None})
    return result

