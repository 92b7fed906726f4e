"""Sections 3 and 4 of tools/device_check.py: Newton–Schulz throughput and accuracy, standard vs Gram-space.

Every path runs the same 5-step polynomial (KJ "simple" triple, as tools/bench_muon.py): ``plain`` is a
torch.optim.Muon-style loop written here (cast, normalize, ``addmm`` twice per step); ``torch_muon`` is
torch's own ``_zeropower_via_newtonschulz`` where this torch has it (always bf16); ``standard`` and
``gram`` are the library's ``orthogonalize`` without and with ``GramSchedule`` (default restarts), each
with the device's default symmetric-block threshold and with ``SYRK_MIN_ROWS`` (what ``--muon-use-syrk``
selects), and ``standard_nosplit`` never splits (to see whether the blocks pay at all on this device).
Throughput is rated at the nominal 5·(4m²n + 2m³) FLOPs for every path (also the Gram one, which does fewer).
Accuracy is against the same polynomial iterated in float64 on the same fp32 input.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from megatron_opt.emerging.newton_schulz import SYMMETRIC_MIN_ROWS, SYMMETRIC_MIN_ROWS_OTHER, SYRK_MIN_ROWS, orthogonalize
from megatron_opt.ns_coefficients import Triple
from tools.bench_muon import GRAM, KJ, NS_STEPS, TRIPLES, ns_flops
from tools.ns_gram_accuracy import errors, make_input, plain_ns

NO_SPLIT = 1 << 30
SPEED_SHAPES = {"full": ((4096, 4096), (4096, 11008), (8192, 28672)), "smoke": ((96, 96), (64, 192))}
ACCURACY_SHAPES = {"full": ((1024, 4096),), "smoke": ((64, 192),)}
ACCURACY_BOUND = 4.0
"""Gram error / standard error allowed, max and Frobenius (the fp32 bound of tests/unit/test_newton_schulz_gram.py)."""


def time_runs(fn: Callable[[], Any], device: torch.device, warmup: int, runs: int) -> List[float]:
    """Seconds per run after ``warmup`` runs: CUDA events on CUDA, ``perf_counter`` elsewhere."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def plain_loop(x: torch.Tensor, triples: Sequence[Triple], dtype: torch.dtype) -> torch.Tensor:
    """torch.optim.Muon's loop, written here: cast, normalize in ``dtype``, two ``addmm`` per step (m ≤ n)."""
    X = x.to(dtype)
    X = X / X.norm().clamp(min=1e-7)
    for a, b, c in triples:
        A = X @ X.mT
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X


def _torch_muon_ns() -> Optional[Callable[..., torch.Tensor]]:
    try:
        from torch.optim._muon import _zeropower_via_newtonschulz
    except ImportError:
        return None
    return _zeropower_via_newtonschulz


def paths(dtype: torch.dtype, with_torch: bool) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    out: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "plain": lambda x: plain_loop(x, TRIPLES, dtype),
        "standard": lambda x: orthogonalize(x, TRIPLES, dtype=dtype),
        "standard_syrk": lambda x: orthogonalize(x, TRIPLES, dtype=dtype, symmetric_min_rows=SYRK_MIN_ROWS),
        "standard_nosplit": lambda x: orthogonalize(x, TRIPLES, dtype=dtype, symmetric_min_rows=NO_SPLIT),
        "gram": lambda x: orthogonalize(x, TRIPLES, dtype=dtype, gram=GRAM),
        "gram_syrk": lambda x: orthogonalize(x, TRIPLES, dtype=dtype, gram=GRAM, symmetric_min_rows=SYRK_MIN_ROWS),
    }
    torch_ns = _torch_muon_ns()
    if with_torch and dtype == torch.bfloat16 and torch_ns is not None:
        out["torch_muon"] = lambda x: torch_ns(x, KJ, NS_STEPS, 1e-7)
    return out


RATIOS = (("gram", "standard"), ("gram_syrk", "standard_syrk"), ("standard", "plain"), ("standard", "torch_muon"),
          ("gram", "plain"), ("standard_syrk", "standard"), ("standard_nosplit", "standard"))


def default_split_rows(device: torch.device) -> int:
    return SYMMETRIC_MIN_ROWS.get(device.type, SYMMETRIC_MIN_ROWS_OTHER)


def speed_shape(m: int, n: int, device: torch.device, dtype: torch.dtype, warmup: int, runs: int) -> Dict[str, Any]:
    x = torch.randn(m, n, device=device, generator=torch.Generator(device=device).manual_seed(0))
    flops = ns_flops((m, n), NS_STEPS)
    row: Dict[str, Any] = {"shape": [m, n], "nominal_flops": flops, "gram_taken": GRAM.applies_to(m, n), "paths": {}}
    reference = None
    for name, fn in paths(dtype, with_torch=True).items():
        if name.startswith("gram") and not row["gram_taken"]:
            continue  # orthogonalize would run the standard loop: nothing new to time
        try:
            out = fn(x)
            finite = bool(torch.isfinite(out).all())
            if reference is None:
                reference = out.float()
            times = time_runs(lambda: fn(x), device, warmup, runs)
        except Exception as e:  # noqa: BLE001 - one path's failure is recorded, the others are still timed
            row["paths"][name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        median = statistics.median(times)
        row["paths"][name] = {"median_s": median, "min_s": min(times), "tflops": flops / median / 1e12, "finite": finite,
                              "max_abs_diff_vs_plain": float((out.float() - reference).abs().max())}
        del out
    timed = {k: v for k, v in row["paths"].items() if "error" not in v}
    row["time_ratios"] = {f"{a}/{b}": timed[a]["median_s"] / timed[b]["median_s"] for a, b in RATIOS if a in timed and b in timed}
    row["pass"] = len(timed) == len(row["paths"]) and all(p["finite"] and p["median_s"] > 0 for p in timed.values())
    return row


def run_speed(device: torch.device, smoke: bool, log, time_cap_s: float = 90.0) -> Dict[str, Any]:
    """Section 3: bf16 on CUDA (fp32 at tiny shapes for --smoke), median of ``runs`` after warm-up, time-capped."""
    if device.type != "cuda" and not smoke:
        return {"status": "skipped", "reason": "no CUDA: full sizes in bf16 need a GPU (use --smoke on CPU)", "checks": []}
    dtype = torch.float32 if smoke else torch.bfloat16
    warmup, runs = (1, 2) if smoke else (2, 5)
    t0 = time.perf_counter()
    checks, skipped = [], []
    for m, n in SPEED_SHAPES["smoke" if smoke else "full"]:
        if time.perf_counter() - t0 > time_cap_s:
            skipped.append({"shape": [m, n], "reason": f"time cap {time_cap_s:.0f} s reached"})
            continue
        try:
            row = speed_shape(m, n, device, dtype, warmup, runs)
        except Exception as e:  # noqa: BLE001 - recorded, the next shape runs
            row = {"shape": [m, n], "pass": False, "error": f"{type(e).__name__}: {e}"}
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        checks.append(row)
        log(_speed_line(row))
    return {"dtype": str(dtype), "warmup": warmup, "runs": runs, "ns_steps": NS_STEPS, "triple": list(KJ),
            "default_symmetric_min_rows": default_split_rows(device), "syrk_min_rows": SYRK_MIN_ROWS,
            "gram_restart_after": list(GRAM.restart_after), "checks": checks, "skipped_shapes": skipped}


def _speed_line(row: Dict[str, Any]) -> str:
    m, n = row["shape"]
    if "error" in row:
        return f"  {m}x{n}: ERROR {row['error']}"
    cells = ", ".join(f"{k} {v['tflops']:.3g}" if "error" not in v else f"{k} ERROR {v['error']}" for k, v in row["paths"].items())
    ratios = ", ".join(f"{k} {v:.2f}" for k, v in row["time_ratios"].items())
    return f"  {m}x{n}: TFLOP/s (nominal) {cells}\n  {'':{len(f'{m}x{n}')}}  time ratios {ratios}"


# ---- accuracy ---------------------------------------------------------------------------------------------


def accuracy_case(m: int, n: int, kind: str, dtype: torch.dtype, device: torch.device, seed: int = 1) -> Dict[str, Any]:
    x32 = make_input(m, n, kind, seed).float().to(device)
    x64 = x32.double()
    oracle = plain_ns(x64 / x64.norm(), TRIPLES)  # the exact fp32 input every path sees, in float64
    names = ["standard", "standard_syrk", "gram", "gram_syrk"] + (["plain"] if dtype == torch.bfloat16 else [])
    every = paths(dtype, with_torch=False)
    errs = {k: errors(every[k](x32), oracle) for k in names}
    out: Dict[str, Any] = {"shape": [m, n], "input": kind, "dtype": str(dtype),
                           "errors": {k: {"max_abs": e[0], "rel_fro": e[1]} for k, e in errs.items()}}
    out["gram_over_standard"] = {f"{g}/{s}": [errs[g][0] / errs[s][0], errs[g][1] / errs[s][1]]
                                 for g, s in (("gram", "standard"), ("gram_syrk", "standard_syrk"))}
    finite = all(math.isfinite(v) for e in errs.values() for v in e)
    out["pass"] = finite and all(r <= ACCURACY_BOUND for pair in out["gram_over_standard"].values() for r in pair)
    return out


def run_accuracy(device: torch.device, smoke: bool, log) -> Dict[str, Any]:
    """Section 4: bf16 and fp32, random and ill-conditioned, against the float64 oracle."""
    if device.type != "cuda" and not smoke:
        return {"status": "skipped", "reason": "no CUDA: bf16 at 1024x4096 needs a GPU (use --smoke on CPU)", "checks": []}
    checks = []
    for m, n in ACCURACY_SHAPES["smoke" if smoke else "full"]:
        for dtype in (torch.bfloat16, torch.float32):
            for kind in ("random", "illcond"):
                try:
                    row = accuracy_case(m, n, kind, dtype, device)
                except Exception as e:  # noqa: BLE001 - recorded, the next case runs
                    row = {"shape": [m, n], "input": kind, "dtype": str(dtype), "pass": False, "error": f"{type(e).__name__}: {e}"}
                checks.append(row)
                log(_accuracy_line(row))
    return {"oracle": "the same polynomial in float64 on the fp32 input", "bound_gram_over_standard": ACCURACY_BOUND,
            "default_symmetric_min_rows": default_split_rows(device), "syrk_min_rows": SYRK_MIN_ROWS, "checks": checks}


def _accuracy_line(row: Dict[str, Any]) -> str:
    head = f"  {row['shape'][0]}x{row['shape'][1]} {row['input']:8s} {row['dtype'].replace('torch.', ''):8s}"
    if "error" in row:
        return f"{head} ERROR {row['error']}"
    cells = ", ".join(f"{k} {e['max_abs']:.1e}/{e['rel_fro']:.1e}" for k, e in row["errors"].items())
    ratios = ", ".join(f"{k} {r[0]:.2f}x/{r[1]:.2f}x" for k, r in row["gram_over_standard"].items())
    return f"{head} {'PASS' if row['pass'] else 'FAIL'} max/fro: {cells}; {ratios}"


__all__ = ["run_speed", "run_accuracy", "time_runs", "plain_loop", "speed_shape", "accuracy_case"]
