"""Benchmark: our Muon step vs torch.optim.Muon, and Newton–Schulz FLOP/s vs dense fp32 matmul FLOP/s.

Both optimizers use the same NS (KJ "simple" triple, 5 steps, scale sqrt(max(1, m/n))). Ours runs with
fp32_matmul_prec='highest'. torch.optim.Muon always iterates in bf16 (``grad.bfloat16()``), which on a
CPU without bf16 matmul units is ~100x slower than fp32; so it is timed twice: as shipped (bf16, small
models only unless --torch-bf16-all) and as "torch-fp32", i.e. torch's own code with that one cast
turned into a copy — the like-for-like comparison. "ours-gram" is ours with ``ns_algorithm="gram"``
(Gram-space NS with restarts for matrices >= 1.5:1), timed in the same rounds.

    python tools/bench_muon.py            # GPT layer shapes (d=768) and a small model (d=256)
    python tools/bench_muon.py --quick    # tiny shapes, a second or two
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from megatron_opt.emerging import TensorParallelMuon, newton_schulz
from megatron_opt.emerging.newton_schulz import orthogonalize
from megatron_opt.emerging.newton_schulz_gram import GramSchedule, default_restarts
from megatron_opt.ns_coefficients import coefficients_for_steps

KJ = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
TRIPLES = coefficients_for_steps("simple", NS_STEPS)
GRAM = GramSchedule(restart_after=default_restarts(NS_STEPS))  # what ns_algorithm="gram" builds by default


def gpt_layer_shapes(hidden: int) -> List[Tuple[int, int]]:
    """The 2-D weights of one GPT layer: fused QKV, attention proj, fc1, fc2 (out × in)."""
    return [(3 * hidden, hidden), (hidden, hidden), (4 * hidden, hidden), (hidden, 4 * hidden)]


def ns_flops(shape: Tuple[int, int], steps: int = NS_STEPS) -> float:
    """Per step: A = XXᵀ (2m²n), A² (2m³), BX (2m²n), with m the short side."""
    m, n = min(shape), max(shape)
    return steps * (4.0 * m * m * n + 2.0 * m**3)


@contextlib.contextmanager
def torch_muon_in_fp32() -> Iterator[None]:
    """Run torch.optim.Muon's own code in fp32: its single ``grad.bfloat16()`` becomes a copy."""
    original = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *a, **k: self.clone()  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = original  # type: ignore[method-assign]


def _params(shapes: Sequence[Tuple[int, int]], seed: int = 0) -> List[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02)
        p.grad = torch.randn(s, generator=gen)
        params.append(p)
    return params


def _time(fn: Callable[[], None], repeats: int) -> List[float]:
    fn()  # warm-up (allocations, MKL thread pools, state creation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _summary(times: Sequence[float]) -> str:
    return f"median {statistics.median(times) * 1e3:9.1f} ms  (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})"


def bench_step(shapes, repeats: int, with_bf16: bool) -> Dict[str, List[float]]:
    ours_params, gram_params, fp32_params, bf16_params = _params(shapes), _params(shapes), _params(shapes), _params(shapes)
    kw = dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, coefficient_type="simple",
              num_ns_steps=NS_STEPS, scale_mode="shape_scaling", fp32_matmul_prec="highest")
    ours = TensorParallelMuon(ours_params, **kw)
    ours_gram = TensorParallelMuon(gram_params, ns_algorithm="gram", **kw)
    theirs = torch.optim.Muon(fp32_params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, ns_coefficients=KJ, ns_steps=NS_STEPS)

    def torch_fp32_step():
        with torch_muon_in_fp32():
            theirs.step()

    # Interleave the repeats so that load from other processes hits both sides alike.
    results: Dict[str, List[float]] = {"ours": [], "ours-gram": [], "torch-fp32": []}
    ours.step(), ours_gram.step(), torch_fp32_step()  # warm-up: state creation, allocator, thread pools
    for _ in range(repeats):
        for label, fn in (("ours", ours.step), ("ours-gram", ours_gram.step), ("torch-fp32", torch_fp32_step)):
            t0 = time.perf_counter()
            fn()
            results[label].append(time.perf_counter() - t0)
    if with_bf16:
        shipped = torch.optim.Muon(bf16_params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, ns_coefficients=KJ, ns_steps=NS_STEPS)
        results["torch-bf16 (as shipped)"] = _time(shipped.step, max(1, repeats // 2))
    return results


def bench_ns(shapes, repeats: int) -> List[Tuple[Tuple[int, int], float, float, Optional[float]]]:
    """(shape, NS FLOP/s, dense matmul FLOP/s, Gram-space NS FLOP/s or None where it is not taken), timed
    alternately so all see the same load; the Gram-space NS is rated at the plain NS's nominal FLOPs.

    The matmul reference is the NS's own biggest product, (m×n)·(n×m) with m the short side, as one
    plain ``torch.mm`` into a preallocated output; both use the best of ``repeats`` runs.
    """
    rows = []
    for shape in sorted(set(shapes)):
        m, n = min(shape), max(shape)
        x = torch.randn(shape)
        a, b, out = torch.randn(m, n), torch.randn(n, m), torch.empty(m, m)
        ns_times, mm_times, gram_times = [], [], []
        gram = GRAM.applies_to(m, n)
        newton_schulz(x, NS_STEPS, "simple", precision="highest")
        for _ in range(repeats):
            t0 = time.perf_counter()
            newton_schulz(x, NS_STEPS, "simple", precision="highest")
            t1 = time.perf_counter()
            for _ in range(5):
                torch.mm(a, b, out=out)
            t2 = time.perf_counter()
            if gram:
                orthogonalize(x, TRIPLES, gram=GRAM)
            gram_times.append(time.perf_counter() - t2)
            ns_times.append(t1 - t0)
            mm_times.append((t2 - t1) / 5)
        rows.append((shape, ns_flops(shape) / min(ns_times), 2.0 * m * m * n / min(mm_times),
                     ns_flops(shape) / min(gram_times) if gram else None))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=1, help="GPT layers of the large model (the time scales linearly)")
    parser.add_argument("--torch-bf16-all", action="store_true", help="also time the as-shipped (bf16) torch.optim.Muon on the large model")
    args = parser.parse_args(argv)

    if args.quick:
        models = {"tiny (2 layers, d=32)": (gpt_layer_shapes(32) * 2, True)}
        repeats = 2
    else:
        models = {
            f"GPT d=768 x {args.layers} layer(s)": (gpt_layer_shapes(768) * args.layers, args.torch_bf16_all),
            "small GPT d=256 x 2 layers": (gpt_layer_shapes(256) * 2, True),
        }
        repeats = args.repeats
    print(f"machine: {platform.machine()} {platform.processor() or ''}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}; python {sys.version.split()[0]}")
    print(f"Muon step, NS = simple x {NS_STEPS}, ours fp32 'highest'; {repeats} repeats")
    for name, (shapes, with_bf16) in models.items():
        res = bench_step(shapes, repeats, with_bf16)
        print(f"  {name}: {len(shapes)} matrices")
        for label, times in res.items():
            print(f"    {label:24s} {_summary(times)}")
        for mine in ("ours", "ours-gram"):
            paired = [o / t for o, t in zip(res[mine], res["torch-fp32"])]
            print(f"    ratio {mine + '/torch-fp32':21s}median of paired ratios {statistics.median(paired):.3f}  (min {min(paired):.3f}, "
                  f"max {max(paired):.3f}); best/best {min(res[mine]) / min(res['torch-fp32']):.3f}")
        if "torch-bf16 (as shipped)" in res:
            print(f"    ratio ours/torch-bf16      medians {statistics.median(res['ours']) / statistics.median(res['torch-bf16 (as shipped)']):.4f}")
    print("Newton-Schulz (simple x 5, fp32) vs a dense fp32 matmul of its largest product, best of repeats:")
    all_shapes = [s for shapes, _ in models.values() for s in shapes]
    for shape, ns, mm, gram in bench_ns(all_shapes, repeats):
        print(f"  {shape[0]:5d}x{shape[1]:<5d} NS {ns / 1e9:7.1f} GFLOP/s, matmul {mm / 1e9:7.1f} GFLOP/s: NS at {100 * ns / mm:5.1f}% of matmul FLOP/s"
              + (f"; gram {gram / 1e9:7.1f} GFLOP/s (nominal) at {100 * gram / mm:5.1f}%" if gram else "; gram not taken (< 1.5:1)"))

if __name__ == "__main__":
    main()
