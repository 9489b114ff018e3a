"""Ablation sweeps (``spectramind ablate``): expand a search space, train each point, rank the runs.

Search-space keys (``cfg.train.ablate.search_space``) are dotted config paths. A key whose first
component is a key of ``cfg.train`` other than ``model`` is relative to ``cfg.train`` and gets the
``train.`` prefix (``optimizer.lr`` -> ``train.optimizer.lr``); every other key is from the config
root (``model.fusion.kind``). A key's value is a list of values, or a string holding a Hydra sweep
expression (``"range(2,5)"``, ``"choice(a,b)"``).

Expansion reuses Hydra's multirun grammar: each key becomes the override ``key=v1,v2,v3``, parsed by
Hydra's ``OverridesParser`` and split into single overrides the way Hydra's BasicSweeper does; the
runs are the Cartesian product in search-space order (the first key varies slowest). When the product
is larger than ``max_runs``, a random subset of ``max_runs`` points, drawn with ``random.Random(seed)``
and kept in product order, is run instead, and the leaderboard says so.

A run that raises is recorded as failed with its error and the sweep goes on. After every run the
leaderboard is rewritten (markdown table, self-contained sortable HTML table, JSON), sorted by the
monitored metric; at the end the top-N successful run directories can be zipped.
"""

from __future__ import annotations

import html
import itertools
import json
import logging
import math
import random
import shutil
import time
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

__all__ = [
    "Leaderboard", "RunRecord", "SweepPlan", "expand_search_space", "plan_sweep", "run_ablation",
    "run_ablation_from_config", "search_key",
]

_LOG = logging.getLogger("spectramind.train")
TrainFn = Callable[[list[str], Path], Mapping[str, Any]]


def search_key(key: str, train_keys: Collection[str]) -> str:
    """The root-relative override key of a search-space key (see the module docstring for the rule)."""
    head = key.split(".", 1)[0]
    return f"train.{key}" if head in train_keys and head != "model" else key


def _hydra_value(value: Any, parser: OverridesParser) -> str:
    """``value`` written in Hydra's override grammar, quoting strings only where the grammar needs it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        try:
            plain = parser.parse_override(f"k={value}").value() == value
        except HydraException:
            plain = False
        return value if plain else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_hydra_value(v, parser)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(_hydra_value(v, parser) for v in value) + "]"
    raise ValueError(f"search-space value {value!r} of type {type(value).__name__} has no override syntax")


def expand_search_space(search_space: Mapping[str, Any], train_keys: Collection[str]) -> list[list[str]]:
    """Every point of the search space as a list of ``key=value`` overrides, in Cartesian-product order."""
    parser = OverridesParser.create()
    sweeps = []
    for key, values in search_space.items():
        if isinstance(values, str):
            sweeps.append(f"{search_key(key, train_keys)}={values}")
            continue
        values = list(values)
        if not values:
            raise ValueError(f"train.ablate.search_space.{key} has no values")
        sweeps.append(f"{search_key(key, train_keys)}={','.join(_hydra_value(v, parser) for v in values)}")
    axes = []
    for override in parser.parse_overrides(sweeps):
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes.append([f"{key}={override.get_value_element_as_str()}"])
        elif override.is_discrete_sweep():
            axes.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            raise ValueError(f"train.ablate.search_space: {key} is not a discrete sweep ({override.input_line})")
    return [list(point) for point in itertools.product(*axes)]


@dataclass
class SweepPlan:
    runs: list[list[str]]
    total: int
    sampled: bool
    seed: int

    def describe(self) -> str:
        if self.sampled:
            return f"{len(self.runs)} of {self.total} combinations (seeded random subset, seed {self.seed})"
        return f"all {self.total} combinations"


def plan_sweep(
    search_space: Mapping[str, Any], train_keys: Collection[str], max_runs: int, seed: int
) -> SweepPlan:
    """The runs to do: the whole product, or a seeded subset of ``max_runs`` kept in product order."""
    if max_runs < 1:
        raise ValueError(f"train.ablate.max_runs must be >= 1, got {max_runs}")
    runs = expand_search_space(search_space, train_keys)
    if len(runs) <= max_runs:
        return SweepPlan(runs, len(runs), False, seed)
    chosen = sorted(random.Random(seed).sample(range(len(runs)), max_runs))
    return SweepPlan([runs[i] for i in chosen], len(runs), True, seed)


@dataclass
class RunRecord:
    name: str
    overrides: list[str]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    best_ckpt: str | None = None
    error: str | None = None
    run_dir: str = ""
    seconds: float = 0.0

    def params(self) -> dict[str, str]:
        return dict(o.split("=", 1) for o in self.overrides)


@dataclass
class Leaderboard:
    records: list[RunRecord]
    monitor: str
    mode: str
    plan: SweepPlan
    md_path: Path
    html_path: Path
    zips: list[Path] = field(default_factory=list)

    def ranked(self) -> list[RunRecord]:
        """Successful runs with a finite monitor value, best first."""
        ok = [r for r in self.records if r.status == "ok" and math.isfinite(r.metrics.get(self.monitor, math.nan))]
        return sorted(ok, key=lambda r: r.metrics[self.monitor], reverse=self.mode == "max")

    def ordered(self) -> list[RunRecord]:
        """Ranked runs, then successful runs without the monitor, then failed runs (each in run order)."""
        ranked = self.ranked()
        rest = [r for r in self.records if r not in ranked]
        return ranked + [r for r in rest if r.status == "ok"] + [r for r in rest if r.status != "ok"]

    def _columns(self) -> tuple[list[str], list[str]]:
        keys = list(dict.fromkeys(k for r in self.records for k in r.params()))
        metrics = sorted({m for r in self.records for m in r.metrics} - {self.monitor})
        return keys, [self.monitor, *metrics]

    def _rows(self) -> list[list[str]]:
        keys, metrics = self._columns()
        ranked = self.ranked()
        rows = []
        for rec in self.ordered():
            rank = str(ranked.index(rec) + 1) if rec in ranked else "-"
            params = rec.params()
            values = [f"{rec.metrics[m]:.6g}" if m in rec.metrics else "" for m in metrics]
            status = rec.status if rec.error is None else f"{rec.status}: {rec.error}"
            rows.append([rank, rec.name, *(params.get(k, "") for k in keys), *values, f"{rec.seconds:.1f}", status])
        return rows

    def header(self) -> list[str]:
        keys, metrics = self._columns()
        return ["rank", "run", *keys, *metrics, "seconds", "status"]

    def summary(self) -> str:
        failed = sum(r.status != "ok" for r in self.records)
        return (f"monitor {self.monitor} ({self.mode}); {self.plan.describe()}; "
                f"{len(self.records) - failed} ok, {failed} failed")

    def to_markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")[:300]

        head = self.header()
        lines = ["# Ablation leaderboard", "", self.summary(), "",
                 "| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self._rows()]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header())
        body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self._rows())
        return _HTML.format(summary=html.escape(self.summary()), head=head, body=body)

    def write(self) -> None:
        for path, text in ((self.md_path, self.to_markdown()), (self.html_path, self.to_html())):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        doc = {"monitor": self.monitor, "mode": self.mode, "plan": asdict(self.plan),
               "records": [asdict(r) for r in self.ordered()]}
        self.md_path.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")


# Clicking a header sorts by that column, numerically when both cells are numbers; again reverses.
_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>SpectraMind V50 ablation leaderboard</title>
<style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}th,td{{border:1px solid #ccc;padding:3px 8px}}
th{{cursor:pointer;background:#eee}}</style></head>
<body><h1>Ablation leaderboard</h1><p>{summary}</p>
<table id="board"><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
<script>
document.querySelectorAll("#board th").forEach(function (th, i) {{
  th.addEventListener("click", function () {{
    var asc = th.dataset.dir !== "asc"; th.dataset.dir = asc ? "asc" : "desc";
    var tb = document.querySelector("#board tbody");
    var val = function (tr) {{ var t = tr.cells[i].textContent; var n = Number(t);
      return (t === "" || isNaN(n)) ? t : n; }};
    Array.from(tb.rows).sort(function (a, b) {{
      var x = val(a), y = val(b);
      var r = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return asc ? r : -r;
    }}).forEach(function (tr) {{ tb.appendChild(tr); }});
  }});
}});
</script></body></html>
"""


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def run_ablation(
    base_overrides: Sequence[str],
    train_fn: TrainFn,
    out_dir: Path,
    *,
    search_space: Mapping[str, Any],
    train_keys: Collection[str],
    seed: int,
    max_runs: int,
    top_n: int,
    md_path: Path,
    html_path: Path,
    zip_dir: Path | None = None,
    monitor: str = "val/score",
    mode: str = "max",
) -> Leaderboard:
    """Train every planned point with ``train_fn(overrides, run_dir)`` and rank the runs.

    ``train_fn`` returns the run's final metrics (floats, e.g. ``val/gll``, ``val/score``) and
    ``best_ckpt``; each run has its own ``out_dir/runNNN``. A sweep override replaces a base override
    of the same key. With ``zip_dir`` the top ``top_n`` successful runs are zipped to
    ``zip_dir/rank{k}_{run}.zip``.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"ablation mode must be 'min' or 'max', got {mode!r}")
    if top_n < 0:
        raise ValueError(f"train.ablate.top_n must be >= 0, got {top_n}")
    plan = plan_sweep(search_space, train_keys, max_runs, seed)
    board = Leaderboard([], monitor, mode, plan, Path(md_path), Path(html_path))
    _LOG.info("ablation: %s", plan.describe())
    out_dir = Path(out_dir)
    for i, point in enumerate(plan.runs):
        swept = {_override_key(o) for o in point}
        overrides = [o for o in base_overrides if _override_key(o) not in swept] + point
        name = f"run{i:03d}"
        run_dir = out_dir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        _LOG.info("ablation %s (%d/%d): %s", name, i + 1, len(plan.runs), " ".join(point))
        t0 = time.monotonic()
        try:
            result = dict(train_fn(overrides, run_dir))
        except Exception as exc:
            _LOG.error("ablation %s failed:\n%s", name, traceback.format_exc())
            record = RunRecord(name, point, "failed", error=f"{type(exc).__name__}: {exc}", run_dir=str(run_dir))
        else:
            metrics = {k: float(v) for k, v in result.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            ckpt = result.get("best_ckpt")
            record = RunRecord(name, point, "ok", metrics, str(ckpt) if ckpt is not None else None,
                               run_dir=str(run_dir))
        record.seconds = time.monotonic() - t0
        board.records.append(record)
        board.write()
    if zip_dir is not None:
        zip_dir = Path(zip_dir)
        zip_dir.mkdir(parents=True, exist_ok=True)
        for k, rec in enumerate(board.ranked()[:top_n], start=1):
            archive = shutil.make_archive(str(zip_dir / f"rank{k}_{rec.name}"), "zip", root_dir=rec.run_dir)
            board.zips.append(Path(archive))
    _LOG.info("ablation done: %s; leaderboard %s", board.summary(), board.md_path)
    return board


def run_ablation_from_config(
    cfg: Mapping[str, Any], base_overrides: Sequence[str], train_fn: TrainFn, out_dir: Path,
    export_root: Path | None = None, monitor: str = "val/score", mode: str = "max",
) -> Leaderboard:
    """:func:`run_ablation` with settings from ``cfg.train.ablate``; relative export paths are
    resolved against ``export_root`` (default: the current directory, like ``train.checkpoints.dir``)."""
    train = cfg["train"]
    ablate = train["ablate"]
    export = ablate["export"]
    root = Path.cwd() if export_root is None else Path(export_root)
    return run_ablation(
        base_overrides, train_fn, out_dir,
        search_space=ablate["search_space"], train_keys=set(train.keys()), seed=int(train["seed"]),
        max_runs=int(ablate["max_runs"]), top_n=int(ablate["top_n"]),
        md_path=root / str(export["md"]), html_path=root / str(export["html"]),
        zip_dir=root / str(export["zip_dir"]) if export.get("zip_top_n", False) else None,
        monitor=monitor, mode=mode,
    )
