"""GPU benchmark of the Triton kernels against the PyTorch references, mamba_ssm and GATConv.

    python -m bench.kernels [--dtype bf16] [--batch 8] [--gat-batch 32]

Needs a CUDA device (exits with a message otherwise). Selective scan at the FGS1 encoder shapes
of the small / base / large presets (d_inner = expand * d_model, their d_state) and seq_len
512 / 2048 / 8192: the Triton forward, the chunked PyTorch implementation of the op, and
mamba_ssm's CUDA ``selective_scan_fn`` where it imports. GAT attention on the 283-bin physics
graph at the presets' heads and channels, Triton vs torch-geometric's GATConv (the same
attention and aggregation) at batch ``--gat-batch``.

Printed per row: median time, achieved exp/s (one exp per (batch, channel, state, step), the
scan's bound) and GB/s (inputs read once, output written once), and their fractions of the
H200 limits the issue names: ~3.9e12 exp/s (132 SMs x 16 special-function results per clock x
~1.8 GHz) and 4.8 TB/s of HBM3e. No GPU run is recorded in this repository: see the closing notes.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch
from rich.console import Console
from rich.table import Table

EXP_LIMIT = 3.9e12
HBM_LIMIT = 4.8e12
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def timed(fn, reps: int = 20) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after 3 warm-ups, by CUDA events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return sorted(times)[len(times) // 2]


def preset_shapes() -> dict[str, tuple[int, int, int, int]]:
    """preset -> (d_inner, d_state, gnn heads, gnn channels per head)."""
    from spectramind.config import compose

    out = {}
    for name in ("small", "base", "large"):
        m = compose([f"model={name}"]).model.encoders
        f, g = m.fgs1_mamba, m.airs_gnn
        out[name] = (int(f.expand) * int(f.d_model), int(f.d_state), int(g.heads), int(g.hidden_dim) // int(g.heads))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gat-batch", type=int, default=32)
    ap.add_argument("--lengths", default="512,2048,8192")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench.kernels needs a CUDA device (run bench/gpu_check.sh on a GPU machine)")
    import triton_kernels  # noqa: F401
    from spectramind import ops
    from triton_kernels.gat import gat_attention_forward
    from triton_kernels.selective_scan import selective_scan_forward

    mamba = None
    if importlib.util.find_spec("mamba_ssm") is not None:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba

    dev, dt = torch.device("cuda"), DTYPES[args.dtype]
    console = Console()
    scan = Table(title=f"selective scan forward, batch {args.batch}, {args.dtype}, {torch.cuda.get_device_name(0)}")
    for col in ("preset", "d_inner x d_state", "L", "impl", "ms", "exp/s", "% exp limit", "GB/s", "% HBM"):
        scan.add_column(col, justify="right")
    shapes = preset_shapes()
    for name, (d, n, _, _) in shapes.items():
        for L in (int(x) for x in args.lengths.split(",")):
            g = torch.Generator(device=dev).manual_seed(0)
            b = args.batch
            u = torch.randn(b, d, L, device=dev, dtype=dt, generator=g)
            delta = torch.randn(b, d, L, device=dev, dtype=dt, generator=g)
            z = torch.randn(b, d, L, device=dev, dtype=dt, generator=g)
            A = -torch.rand(d, n, device=dev, generator=g) - 0.5
            B = torch.randn(b, n, L, device=dev, dtype=dt, generator=g)
            C = torch.randn(b, n, L, device=dev, dtype=dt, generator=g)
            D = torch.randn(d, device=dev)
            bias = torch.randn(d, device=dev)
            impls = {
                "triton": lambda: selective_scan_forward(u, delta, A, B, C, D, z, bias, True, False),
                "pytorch (op CPU impl)": lambda: ops.selective_scan_chunked(u, delta, A, B, C, D, z, bias, True),
            }
            if mamba is not None:
                impls["mamba_ssm"] = lambda: mamba(u, delta, A, B, C, D, z, bias, True)
            exps = b * d * n * L
            nbytes = (4 * b * d * L + 2 * b * n * L) * u.element_size() + 4 * (d * n + 2 * d)
            for impl, fn in impls.items():
                reps = 3 if impl.startswith("pytorch") else 20
                s = timed(fn, reps)
                scan.add_row(name, f"{d} x {n}", str(L), impl, f"{s * 1e3:.3f}", f"{exps / s:.3g}",
                             f"{100 * exps / s / EXP_LIMIT:.1f}", f"{nbytes / s / 1e9:.0f}",
                             f"{100 * nbytes / s / HBM_LIMIT:.1f}")
    console.print(scan)

    gat = Table(title=f"GAT attention on the 283-bin graph, batch {args.gat_batch}, {args.dtype}")
    for col in ("preset", "heads x C", "impl", "ms", "GB/s", "% HBM"):
        gat.add_column(col, justify="right")
    from spectramind.bins import load_grid
    from spectramind.config import compose
    from spectramind.model.graph import build_graph

    graph = build_graph(compose(["model=small"]).model.encoders.airs_gnn, load_grid())
    loops = torch.arange(283)
    edge_index = torch.cat([graph.edge_index, torch.stack([loops, loops])], 1).to(dev)
    E = edge_index.shape[1]
    have_pyg = importlib.util.find_spec("torch_geometric") is not None
    for name, (_, _, heads, ch) in shapes.items():
        g = torch.Generator(device=dev).manual_seed(1)
        x = torch.randn(args.gat_batch, 283, heads, ch, device=dev, dtype=dt, generator=g)
        a_s = torch.randn(heads, ch, device=dev, dtype=dt, generator=g)
        a_d = torch.randn(heads, ch, device=dev, dtype=dt, generator=g)
        eb = torch.randn(E, heads, device=dev, dtype=dt, generator=g)
        impls = {"triton": lambda: gat_attention_forward(x, a_s, a_d, eb, edge_index, 0.2)}
        if have_pyg:
            from torch_geometric.nn import GATConv

            conv = GATConv(heads * ch, ch, heads=heads, add_self_loops=False).to(dev, dt)
            flat = x.reshape(args.gat_batch * 283, heads * ch)
            offsets = (torch.arange(args.gat_batch, device=dev) * 283).repeat_interleave(E)
            big = edge_index.repeat(1, args.gat_batch) + offsets
            impls["GATConv (PyG, batched graph)"] = lambda: conv(flat, big)
        nbytes = (2 * x.numel() + eb.numel() + args.gat_batch * E * heads) * x.element_size()
        for impl, fn in impls.items():
            s = timed(fn)
            gat.add_row(name, f"{heads} x {ch}", impl, f"{s * 1e3:.3f}", f"{nbytes / s / 1e9:.0f}",
                        f"{100 * nbytes / s / HBM_LIMIT:.1f}")
    console.print(gat)


if __name__ == "__main__":
    main()
