"""CPU benchmark of the custom ops against their references.

    python -m bench.ops [--threads 1] [--repeats 5] [--lengths 256 1024 4096] [--grad-length 1024]
                        [--ref-max-length 4096]

Table 1: ``spectramind::selective_scan`` (chunk-parallel CPU implementation) against the per-step
``selective_scan_ref`` at batch 8, d_inner 512, d_state 32, with the full Mamba configuration
(D, z gate, delta_bias, softplus), forward only, and forward+backward at one length.
Table 2: ``spectramind::gat_attention`` against the edge-list ``gat_attention_ref`` and
torch_geometric ``GATConv(heads=4, edge_dim=4)`` on a 283-node chain+random graph, batch 32,
forward only. Times are medians; the reference is run fewer times because it is slow, and
beyond ``--ref-max-length`` it is extrapolated linearly from the longest measured length
(the per-step loop is linear in L), which the table marks. Run by hand; never collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from spectramind import ops

BATCH, D_INNER, D_STATE = 8, 512, 32
N_NODES, HEADS, HIDDEN, EDGE_DIM, GAT_BATCH = 283, 4, 256, 4, 32


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scan_inputs(length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mamba-block inputs: S4D-real A = -(1..d_state), dt_bias giving softplus(delta) in ~[1e-3, 1e-1]."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(D_INNER, generator=g) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3))))
    dt = dt * 1e-3
    return {
        "u": torch.randn(BATCH, D_INNER, length, generator=g),
        "delta": 0.5 * torch.randn(BATCH, D_INNER, length, generator=g),
        "A": -torch.arange(1, D_STATE + 1, dtype=torch.float32).repeat(D_INNER, 1),
        "B": torch.randn(BATCH, D_STATE, length, generator=g),
        "C": torch.randn(BATCH, D_STATE, length, generator=g),
        "D": torch.ones(D_INNER),
        "z": torch.randn(BATCH, D_INNER, length, generator=g),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),  # inverse softplus, as Mamba initialises dt_proj.bias
    }


def scan_call(fn: Callable[..., torch.Tensor], t: dict[str, torch.Tensor], backward: bool) -> Callable[[], None]:
    def run() -> None:
        if backward:
            leaves = {k: v.detach().requires_grad_(True) for k, v in t.items()}
            y = fn(**leaves, delta_softplus=True)
            y.backward(torch.ones_like(y))
        else:
            with torch.no_grad():
                fn(**t, delta_softplus=True)

    return run


def bench_scan(args: argparse.Namespace, console: Console) -> None:
    table = Table(
        title=f"selective_scan, batch {BATCH}, d_inner {D_INNER}, d_state {D_STATE}, D + z + delta_bias + softplus, "
        f"{args.threads} thread(s)"
    )
    for col in ("pass", "seq_len", "chunking (ch, K, T)", "op ms", "ref ms", "ref runs", "speed-up"):
        table.add_column(col, justify="right")
    def row(name: str, length: int, op_s: float, ref_s: float, ref_note: str) -> None:
        plan = str(ops._scan_plan(BATCH, D_INNER, D_STATE, length))
        speed = f"{ref_s / op_s:.1f}x"
        table.add_row(name, str(length), plan, f"{op_s * 1e3:.0f}", f"{ref_s * 1e3:.0f}", ref_note, speed)

    measured: tuple[int, float] | None = None  # (length, ref seconds) of the longest measured reference
    for length in sorted(args.lengths):
        t = scan_inputs(length)
        op_s = median_seconds(scan_call(ops.selective_scan, t, False), args.repeats)
        if length <= args.ref_max_length or measured is None:
            runs = 1 if length >= 4096 else max(1, args.repeats // 2)
            ref_s = median_seconds(scan_call(ops.selective_scan_ref, t, False), runs, warmup=0)
            measured, ref_note = (length, ref_s), str(runs)
        else:
            ref_s, ref_note = measured[1] * length / measured[0], f"extrapolated from L={measured[0]}"
        row("forward", length, op_s, ref_s, ref_note)
    if args.grad_length:
        t = scan_inputs(args.grad_length)
        op_s = median_seconds(scan_call(ops.selective_scan, t, True), max(1, args.repeats // 2))
        ref_s = median_seconds(scan_call(ops.selective_scan_ref, t, True), 1, warmup=0)
        row("fwd+bwd", args.grad_length, op_s, ref_s, "1")
    console.print(table)


def chain_random_graph(n_random: int = 1450, seed: int = 0) -> torch.Tensor:
    """The 283-bin chain in both directions plus random long-range edges, no self-loops or repeats: (2, E)."""
    g = torch.Generator().manual_seed(seed)
    chain = torch.stack([torch.arange(N_NODES - 1), torch.arange(1, N_NODES)])
    pairs = torch.cat([chain, chain.flip(0), torch.randint(0, N_NODES, (2, n_random), generator=g)], dim=1)
    pairs = pairs[:, pairs[0] != pairs[1]]
    key = torch.unique(pairs[1] * N_NODES + pairs[0])
    return torch.stack([key % N_NODES, key // N_NODES])


def bench_gat(args: argparse.Namespace, console: Console) -> None:
    from torch_geometric.data import Batch, Data
    from torch_geometric.nn import GATConv

    edge_index = chain_random_graph()
    ch = HIDDEN // HEADS
    g = torch.Generator().manual_seed(1)
    conv = GATConv(HIDDEN, ch, heads=HEADS, edge_dim=EDGE_DIM).eval()
    x_nodes = torch.randn(GAT_BATCH, N_NODES, HIDDEN, generator=g)
    edge_attr = torch.randn(edge_index.shape[1], EDGE_DIM, generator=g)
    pyg = Batch.from_data_list(
        [Data(x=x_nodes[i], edge_index=edge_index, edge_attr=edge_attr) for i in range(GAT_BATCH)]
    )
    # The op sees the graph GATConv attends over: GATConv adds one self-loop per node itself
    # (edge attribute = mean of the node's incoming ones), so the op's graph carries them explicitly.
    loops = torch.arange(N_NODES).expand(2, -1)
    op_edges = torch.cat([edge_index, loops], dim=1)
    op_edge_attr = torch.cat([edge_attr, edge_attr.new_zeros(N_NODES, EDGE_DIM)])
    att_src, att_dst = conv.att_src[0].detach(), conv.att_dst[0].detach()
    # GATConv's edge term <W_e e_ji, att_edge> folded into one (edge_dim, heads) matrix.
    w_edge = (conv.lin_edge.weight.t().view(EDGE_DIM, HEADS, ch) * conv.att_edge[0]).sum(-1).detach()

    def op_only() -> None:
        ops.gat_attention(x_heads, att_src, att_dst, edge_bias, op_edges)

    def op_layer() -> None:
        # The same work as a GATConv forward: node projection, edge-feature term, attention.
        xh = conv.lin(x_nodes).view(GAT_BATCH, N_NODES, HEADS, ch)
        out, _ = ops.gat_attention(xh, att_src, att_dst, op_edge_attr @ w_edge, op_edges)
        out.reshape(GAT_BATCH, N_NODES, HIDDEN) + conv.bias

    def ref_only() -> None:
        ops.gat_attention_ref(x_heads, att_src, att_dst, edge_bias, op_edges)

    def gatconv() -> None:
        conv(pyg.x, pyg.edge_index, pyg.edge_attr)

    with torch.no_grad():
        x_heads = conv.lin(x_nodes).view(GAT_BATCH, N_NODES, HEADS, ch)
        edge_bias = op_edge_attr @ w_edge
        rows = [
            ("gat_attention op (attention only)", median_seconds(op_only, args.repeats)),
            ("gat_attention op + projections (a GAT layer)", median_seconds(op_layer, args.repeats)),
            ("gat_attention_ref, edge list (attention only)", median_seconds(ref_only, args.repeats)),
            ("torch_geometric GATConv(heads=4, edge_dim=4)", median_seconds(gatconv, args.repeats)),
        ]
    base = rows[-1][1]
    table = Table(
        title=f"GAT attention, {N_NODES} nodes, {edge_index.shape[1]} edges + {N_NODES} self-loops, batch {GAT_BATCH}, "
        f"{HEADS} heads x {ch} channels, forward, {args.threads} thread(s)"
    )
    for col in ("implementation", "ms", "GATConv time / this"):
        table.add_column(col, justify="right")
    for name, sec in rows:
        table.add_row(name, f"{sec * 1e3:.1f}", f"{base / sec:.2f}x")
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per op measurement (median)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--grad-length", type=int, default=1024, help="seq_len of the forward+backward row; 0 skips it")
    ap.add_argument("--ref-max-length", type=int, default=4096, help="longer sequences extrapolate the reference")
    ap.add_argument("--skip-gat", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    console = Console()
    console.print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    bench_scan(args, console)
    if not args.skip_gat:
        bench_gat(args, console)


if __name__ == "__main__":
    main()
