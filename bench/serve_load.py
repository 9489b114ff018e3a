"""Closed-loop load on the inference server: latency, throughput, server overhead, batching gain.

    python -m bench.serve_load [--artifact outputs/artifacts/default] [--concurrency 1,16,64]
                               [--batching on,off] [--route oip|predict] [--duration 10] [--warmup 2]
                               [--device auto] [--runtime torchscript] [--port 18000] [--json OUT]

For each batching mode it starts its own server process on 127.0.0.1 (``uvicorn serve.app:app``
with ``SPECTRAMIND_BATCHING=on|off``, everything else from the environment), waits for
``/v2/health/ready``, then runs ``c`` clients (c = each ``--concurrency``) that each send the
next request as soon as the last one is answered (closed loop) for ``--duration`` seconds after
``--warmup`` seconds (an answer counts when it arrives inside that window), and stops the server
(SIGTERM: the graceful drain).

The request is the shipped sample (``serve/examples/sample_request.json``: one planet, FGS1 112 and
AIRS 282 x 56 time bins): by default as an Open Inference Protocol v2 infer request with binary
tensors (``--route oip``: FGS1, FGS1_TIME, AIRS, AIRS_TIME in raw float32, MU and SIGMA back
binary), or as the JSON body of ``POST /predict`` (``--route predict``). The server computes the
features (baseline fit) of every request; there is no pre-featurised route.

Columns: client latency p50/p99 and throughput (answers per second, 200s only); the server's own
``Server-Timing`` parts (p50): features, queue, compute (the batched forward that served the
request); **overhead** = total - features_wait - features - queue - compute, the time the server spends on
anything but the work (HTTP, parsing, validation, thread hand-offs, encoding; the wait for a
feature worker is its own part, ``features_wait``), p50 and p99; mean
batch size over the run (from ``/metrics``). Targets: overhead p50 <= 0.5 ms and p99 <= 2 ms;
batching on gives >= 3x the throughput of batching off (batches of one) at concurrency 16.

Run by hand; never collected by pytest. Client and server share the machine's CPUs: on a small
machine the client's own CPU time is part of what is measured (the table's title says how many).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "serve" / "examples" / "sample_request.json"
OVERHEAD_P50_MS = 0.5
OVERHEAD_P99_MS = 2.0
BATCHING_GAIN = 3.0
GAIN_AT = 16
PARTS = ("total", "features_wait", "features", "queue", "compute")


# ---------------------------------------------------------------- requests


def oip_request(body: dict) -> tuple[bytes, dict[str, str]]:
    """The sample as an OIP v2 infer request with the binary tensor extension (as tritonclient sends it)."""
    f_flux = np.asarray(body["fgs1"]["flux"], dtype="<f4")[None]
    f_time = np.asarray(body["fgs1"]["time_h"], dtype="<f4")[None]
    a_flux = np.asarray(body["airs"]["flux"], dtype="<f4")[None]
    a_time = np.asarray(body["airs"]["time_h"], dtype="<f4")[None]
    tensors = {"FGS1": f_flux, "FGS1_TIME": f_time, "AIRS": a_flux, "AIRS_TIME": a_time}
    header = {
        "inputs": [{"name": n, "shape": list(a.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": a.nbytes}} for n, a in tensors.items()],
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in ("MU", "SIGMA")],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    payload = head + b"".join(a.tobytes() for a in tensors.values())
    return payload, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def build_request(route: str) -> tuple[str, bytes, dict[str, str]]:
    raw = SAMPLE.read_bytes()
    if route == "predict":
        return "/predict", raw, {"Content-Type": "application/json"}
    payload, headers = oip_request(json.loads(raw))
    return "/v2/models/spectramind/infer", payload, headers


def server_timing(header: str | None) -> dict[str, float]:
    """``total;dur=1.234, queue;dur=0.1`` -> {"total": 1.234, "queue": 0.1} (milliseconds)."""
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        name, _, rest = part.strip().partition(";")
        for attr in rest.split(";"):
            key, _, value = attr.strip().partition("=")
            if key == "dur" and name:
                out[name] = float(value)
    return out


# ---------------------------------------------------------------- server


class Server:
    """One ``uvicorn serve.app:app`` process on 127.0.0.1 that this script started and stops."""

    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115  (open for the process's lifetime)
        cmd = [sys.executable, "-m", "uvicorn", "serve.app:app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--no-access-log"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=self._fh,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with status {self.proc.returncode}; log: {self.log}\n"
                                   + self.log.read_text(errors="replace")[-2000:])
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet: poll again until ready_timeout
            time.sleep(0.5)
        raise TimeoutError(f"server on port {self.port} not ready within {timeout_s:.0f} s; log: {self.log}")

    def batch_stats(self) -> tuple[float, float]:
        """(sum, count) of the spectramind_batch_size histogram."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        total = count = 0.0
        for family in text_string_to_metric_families(text):
            if family.name == "spectramind_batch_size":
                for s in family.samples:
                    if s.name.endswith("_sum"):
                        total = s.value
                    elif s.name.endswith("_count"):
                        count = s.value
        return total, count

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return self.proc.returncode


# ---------------------------------------------------------------- load


@dataclass
class Point:
    batching: str
    concurrency: int
    seconds: float
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list, repr=False)
    parts_ms: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PARTS}, repr=False)
    mean_batch: float = float("nan")

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def overhead_ms(self) -> np.ndarray:
        p = {k: np.asarray(v) for k, v in self.parts_ms.items()}
        n = min(len(v) for v in p.values())
        if n == 0:
            return np.empty(0)
        return p["total"][:n] - p["features_wait"][:n] - p["features"][:n] - p["queue"][:n] - p["compute"][:n]

    def summary(self) -> dict:
        q = lambda xs, p: float(np.percentile(xs, p)) if len(xs) else float("nan")  # noqa: E731
        ov = self.overhead_ms()
        return {
            "batching": self.batching, "concurrency": self.concurrency, "seconds": self.seconds, "ok": self.ok,
            "errors": self.errors, "throughput_per_s": self.throughput,
            "latency_p50_ms": q(self.latency_ms, 50), "latency_p99_ms": q(self.latency_ms, 99),
            **{f"{k}_p50_ms": q(v, 50) for k, v in self.parts_ms.items()},
            "overhead_p50_ms": q(ov, 50), "overhead_p99_ms": q(ov, 99), "mean_batch": self.mean_batch,
        }


async def _client(client: httpx.AsyncClient, path: str, payload: bytes, headers: dict[str, str],
                  stop_at: float, measure_from: float, point: Point) -> None:
    while True:
        t0 = time.perf_counter()
        if t0 >= stop_at:
            return
        try:
            r = await client.post(path, content=payload, headers=headers)
            status = str(r.status_code)
        except httpx.HTTPError as exc:
            r, status = None, type(exc).__name__
        t1 = time.perf_counter()
        # Throughput counts the answers that arrive inside the window, whenever they were sent:
        # with slow requests (seconds of feature fitting) nothing would be both sent and answered in it.
        if not measure_from <= t1 <= stop_at:
            continue
        if r is not None and r.status_code == 200:
            point.ok += 1
            point.latency_ms.append((t1 - t0) * 1e3)
            timing = server_timing(r.headers.get("server-timing"))
            if all(k in timing for k in PARTS):
                for k in PARTS:
                    point.parts_ms[k].append(timing[k])
        else:
            point.errors[status] = point.errors.get(status, 0) + 1


async def run_point(server: Server, batching: str, concurrency: int, route: str,
                    duration: float, warmup: float) -> Point:
    path, payload, headers = build_request(route)
    point = Point(batching, concurrency, duration)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    before = server.batch_stats()
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120.0) as client:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + duration
        await asyncio.gather(*(_client(client, path, payload, headers, stop_at, measure_from, point)
                               for _ in range(concurrency)))
    after = server.batch_stats()
    if after[1] > before[1]:
        point.mean_batch = (after[0] - before[0]) / (after[1] - before[1])
    return point


# ---------------------------------------------------------------- report


def _ok(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def report(points: list[Point], args: argparse.Namespace, console: Console) -> dict:
    table = Table(title=(f"serve load: {args.route} ({'binary OIP v2' if args.route == 'oip' else 'JSON'}), "
                         f"{args.duration:g} s a point after {args.warmup:g} s warm-up; device {args.device}, "
                         f"runtime {args.runtime}; {os.cpu_count()} CPUs ({platform.machine()}) shared by "
                         "client and server"))
    cols = ("batching", "conc.", "req/s", "p50 ms", "p99 ms", "feat. wait p50", "features p50", "queue p50",
            "compute p50",
            "overhead p50", "overhead p99", "mean batch", "errors")
    for c in cols:
        table.add_column(c, justify="right")
    rows = [p.summary() for p in points]
    for s in rows:
        errs = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0"
        table.add_row(s["batching"], str(s["concurrency"]), f"{s['throughput_per_s']:.1f}",
                      f"{s['latency_p50_ms']:.2f}", f"{s['latency_p99_ms']:.2f}", f"{s['features_wait_p50_ms']:.2f}",
                      f"{s['features_p50_ms']:.2f}",
                      f"{s['queue_p50_ms']:.2f}", f"{s['compute_p50_ms']:.2f}", f"{s['overhead_p50_ms']:.3f}",
                      f"{s['overhead_p99_ms']:.3f}", f"{s['mean_batch']:.2f}", errs)
    console.print(table)

    targets = Table(title="targets")
    for c in ("target", "measured", "met"):
        targets.add_column(c, justify="right")
    # At concurrency 1 nothing waits for a feature worker; above SPECTRAMIND_FEATURE_WORKERS requests
    # do, and Server-Timing reports that wait as features_wait, so it is not counted as overhead.
    solo = [s for s in rows if s["concurrency"] == 1]
    for label, subset in (("concurrency 1", solo), ("worst row", rows)):
        if not subset:
            continue
        ov50 = max(s["overhead_p50_ms"] for s in subset)
        ov99 = max(s["overhead_p99_ms"] for s in subset)
        targets.add_row(f"overhead p50 <= {OVERHEAD_P50_MS} ms ({label})", f"{ov50:.3f} ms", _ok(ov50 <= OVERHEAD_P50_MS))
        targets.add_row(f"overhead p99 <= {OVERHEAD_P99_MS} ms ({label})", f"{ov99:.3f} ms", _ok(ov99 <= OVERHEAD_P99_MS))
    thr = {(s["batching"], s["concurrency"]): s["throughput_per_s"] for s in rows}
    gain = float("nan")
    if ("on", GAIN_AT) in thr and ("off", GAIN_AT) in thr and thr[("off", GAIN_AT)] > 0:
        gain = thr[("on", GAIN_AT)] / thr[("off", GAIN_AT)]
        targets.add_row(f"batching on / off throughput at concurrency {GAIN_AT} >= {BATCHING_GAIN:g}x",
                        f"{gain:.2f}x", _ok(gain >= BATCHING_GAIN))
    console.print(targets)
    worst = {k: max((s[k] for s in rows), default=float("nan")) for k in ("overhead_p50_ms", "overhead_p99_ms")}
    return {"args": {k: str(v) for k, v in vars(args).items() if k != "json"}, "points": rows,
            "targets": {**worst, "batching_gain": gain}}


# ---------------------------------------------------------------- main


def _csv(text: str, cast=str) -> list:
    return [cast(s.strip()) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", default=os.environ.get("SPECTRAMIND_ARTIFACT", "outputs/artifacts/default"))
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--batching", default="on,off")
    ap.add_argument("--route", choices=("oip", "predict"), default="oip")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    ap.add_argument("--device", default=os.environ.get("SPECTRAMIND_DEVICE", "auto"))
    ap.add_argument("--runtime", default=os.environ.get("SPECTRAMIND_RUNTIME", "torchscript"))
    ap.add_argument("--port", type=int, default=18000, help="first port; each server takes the next one")
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    console = Console()
    if not console.is_terminal:  # logs and files: the table is wider than the 80-column default
        console = Console(width=max(console.width, 160))
    artifact = Path(args.artifact).resolve()
    if not (artifact / "manifest.json").is_file():
        console.print(f"error: no artifact at {artifact} (build one: python -m serve.quickstart --build-only)")
        return 2
    concurrency = _csv(args.concurrency, int)
    modes = _csv(args.batching)
    if any(m not in ("on", "off") for m in modes) or any(c < 1 for c in concurrency):
        console.print("error: --batching takes on/off, --concurrency positive integers")
        return 2
    logs = REPO / "outputs" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    points: list[Point] = []
    for i, mode in enumerate(modes):
        env = {"SPECTRAMIND_ARTIFACT": str(artifact), "SPECTRAMIND_BATCHING": mode,
               "SPECTRAMIND_DEVICE": args.device, "SPECTRAMIND_RUNTIME": args.runtime}
        server = Server(args.port + i, env, logs / f"serve_load_{mode}.log")
        try:
            console.print(f"batching {mode}: starting the server on {server.url} (warm-up) ...")
            server.wait_ready(args.ready_timeout)
            for c in concurrency:
                point = asyncio.run(run_point(server, mode, c, args.route, args.duration, args.warmup))
                console.print(f"  concurrency {c}: {point.throughput:.1f} req/s, {point.ok} ok, errors {point.errors}")
                points.append(point)
        finally:
            rc = server.stop()
            if rc not in (0, -signal.SIGTERM):
                console.print(f"[yellow]server (batching {mode}) exited with status {rc}; log {server.log}[/]")
    result = report(points, args, console)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
