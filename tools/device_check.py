"""The prepared GPU check: the project's CUDA-only claims, in one short command (docs/device_check.md).

    python tools/device_check.py --json $OUT/device_check.json     # on the device machine (sized for well under 4 min)
    python tools/device_check.py --smoke --json /tmp/dc.json        # CPU, tiny sizes, seconds (unit-tested)

Sections, each timed and wrapped so that a failure is recorded and the others still run:

1. ``skip_step_sync``: no host sync in the on-device skip-step path (adam with torch fused, adam bf16,
   muon, adaptive_muon, lion, soap), a loss spike skipped on device and a normal step applied
   (tools/device_check_skip_step.py).
2. ``te_fused_adam``: our adam with ``standard_backend="te"`` against ``torch.optim.AdamW(fused=True)`` on the
   same params and grads for 10 steps: max |Δparam| and the step-time ratio (only if transformer_engine imports).
3. ``ns_throughput``: bf16 Newton–Schulz TFLOP/s, standard vs Gram-space vs a plain loop, default vs SYRK
   block threshold (tools/device_check_ns.py).
4. ``ns_accuracy``: bf16 and fp32 Newton–Schulz error against a float64 oracle, standard vs Gram-space.

The exit code is 0 whatever a check found (2 only for bad flags); the JSON says pass/fail per check.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from megatron_opt.config import OptimizerConfig  # noqa: E402
from megatron_opt.factory import get_megatron_optimizer  # noqa: E402
from tools import device_check_ns, device_check_skip_step  # noqa: E402
from tools.device_check_skip_step import BACKEND_LOG, _LogLines  # noqa: E402

SECTIONS = ("skip_step_sync", "te_fused_adam", "ns_throughput", "ns_accuracy")
ADAM_SHAPES = {"full": ((4096, 4096),) * 4 + ((11008, 4096), (4096, 11008)), "smoke": ((32, 16), (16, 32), (48, 32))}
ADAM_STEPS, ADAM_TIMED = 10, 20
TE_TOLERANCE = 1e-6
"""max |Δparam| allowed between TE FusedAdam and torch's fused AdamW after 10 fp32 steps (lr 1e-3, wd 0.1):
far above fp32 rounding, far below one step's decay term (lr·wd·|p| ≈ 1.6e-6 here), so a wrong mode shows."""


def log(line: str) -> None:
    print(line, flush=True)


# ---- section 2: Transformer Engine FusedAdam ---------------------------------------------------------------


def _te_import_error() -> Optional[str]:
    try:
        importlib.import_module("transformer_engine.pytorch.optimizers").FusedAdam  # noqa: B018
    except Exception as e:  # noqa: BLE001 - any failure means "not available here"
        return f"{type(e).__name__}: {e}"
    return None


def compare_adam(backend: str, device: torch.device, shapes: Sequence[Sequence[int]], timed: int) -> Dict[str, Any]:
    """Our adam (``standard_backend=backend``, clip off) against torch's fused AdamW, same groups, params, grads."""
    gen = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(i, o, bias=False, device=device) for o, i in shapes])
    ref_params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    handler = _LogLines()
    logger = logging.getLogger("megatron_opt")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        config = OptimizerConfig(optimizer="adam", lr=1e-3, weight_decay=0.1, clip_grad=0.0, standard_backend=backend)
        opt = get_megatron_optimizer(config, [model])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    index = {id(p): i for i, p in enumerate(model.parameters())}
    groups = [{"params": [ref_params[index[id(p)]] for p in g["params"]], "lr": g["lr"], "weight_decay": g["weight_decay"]}
              for g in opt.param_groups]
    ref = torch.optim.AdamW(groups, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps, fused=True)
    grads = [torch.randn(p.shape, generator=gen, device=device) * 1e-2 for p in model.parameters()]

    def feed(step: int) -> None:
        for p, r, g in zip(model.parameters(), ref_params, grads):
            p.grad, r.grad = g * (1.0 + 0.1 * step), g * (1.0 + 0.1 * step)

    for step in range(ADAM_STEPS):
        feed(step)
        opt.step()
        ref.step()
    diff = max(float((p.detach() - r.detach()).abs().max()) for p, r in zip(model.parameters(), ref_params))
    res: Dict[str, Any] = {"backend_requested": backend, "backends_logged": dict(BACKEND_LOG.findall("\n".join(handler.lines))),
                           "inner_optimizer": f"{type(opt.optimizer).__module__}.{type(opt.optimizer).__name__}",
                           "n_params": sum(p.numel() for p in model.parameters()), "steps": ADAM_STEPS,
                           "max_abs_param_diff": diff}
    feed(ADAM_STEPS)
    inner = device_check_ns.time_runs(opt.optimizer.step, device, 2, timed)
    whole = device_check_ns.time_runs(opt.step, device, 2, timed)
    torch_fused = device_check_ns.time_runs(ref.step, device, 2, timed)
    med = statistics.median
    res.update(timed_steps=timed, inner_step_s=med(inner), our_step_s=med(whole), torch_fused_step_s=med(torch_fused),
               inner_over_torch=med(inner) / med(torch_fused), our_step_over_torch=med(whole) / med(torch_fused))
    bound = 0.0 if backend == "torch_fused" else TE_TOLERANCE  # torch_fused is the same kernel: bitwise
    res["tolerance"] = bound
    res["pass"] = diff <= bound and res["backends_logged"].get("adam") == backend
    return res


def run_te(device: torch.device, smoke: bool) -> Dict[str, Any]:
    full = device.type == "cuda" and not smoke
    shapes, timed = (ADAM_SHAPES["full"], ADAM_TIMED) if full else (ADAM_SHAPES["smoke"], 3)
    te_error = _te_import_error()
    reasons = ([] if device.type == "cuda" else ["no CUDA"]) + ([] if te_error is None else [f"transformer_engine not importable ({te_error})"])
    if not reasons:
        res = compare_adam("te", device, shapes, timed)
        log(_adam_line(res))
        return {"checks": [res]}
    # Not the TE check: the same comparison with our torch_fused backend, so the code stays exercised.
    res = compare_adam("torch_fused", device, shapes, timed)
    log("  skipped: " + "; ".join(reasons))
    log("  exercised instead with standard_backend=torch_fused:" + _adam_line(res))
    return {"status": "skipped", "reason": "; ".join(reasons), "checks": [], "exercised_instead": [res]}


def _adam_line(res: Dict[str, Any]) -> str:
    return (f"  {'PASS' if res['pass'] else 'FAIL'} {res['inner_optimizer']} vs torch fused AdamW, {res['n_params']} params: "
            f"max |dparam| {res['max_abs_param_diff']:.2e} after {res['steps']} steps (allowed {res['tolerance']:g}); "
            f"inner step / torch {res['inner_over_torch']:.2f}x, our whole step() / torch {res['our_step_over_torch']:.2f}x")


# ---- the runner ------------------------------------------------------------------------------------------


def _status(out: Dict[str, Any]) -> str:
    """fail if any check that ran failed (also the CPU stand-ins of a skipped section), else as set, else pass."""
    if not all(c.get("pass") for c in out.get("checks", []) + out.get("exercised_instead", [])):
        return "fail"
    return out.get("status", "pass")


def run_section(name: str, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    log(f"\n== {name} ==")
    t0 = time.perf_counter()
    try:
        out = fn()
        out["status"] = _status(out)
    except Exception:  # noqa: BLE001 - the next section still runs
        out = {"status": "error", "error": traceback.format_exc()}
        log(out["error"])
    finally:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
    out["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"-- {name}: {out['status']}" + (f" ({out['reason']})" if out.get("reason") else "") + f", {out['seconds']} s")
    return out


def machine(device: torch.device) -> Dict[str, Any]:
    try:
        return _machine(device)
    except Exception as e:  # noqa: BLE001 - the checks matter more than the description
        return {"device": str(device), "error": f"{type(e).__name__}: {e}"}


def _machine(device: torch.device) -> Dict[str, Any]:
    info: Dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
                            "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=list(torch.cuda.get_device_capability(device)),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    try:
        info["transformer_engine"] = importlib.import_module("transformer_engine").__version__
    except Exception:  # noqa: BLE001
        info["transformer_engine"] = None
    return info


def section_list(text: str) -> List[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: use a comma-separated subset of {', '.join(SECTIONS)}")
    return names


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, fp32 throughput; CUDA-only parts skipped on CPU")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--sections", type=section_list, default=list(SECTIONS), metavar="LIST",
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    result: Dict[str, Any] = {"tool": "device_check", "argv": list(sys.argv[1:] if argv is None else argv),
                              "mode": "smoke" if args.smoke else "full", "machine": machine(device),
                              "sections_requested": list(args.sections), "sections": {}}
    log(f"device_check ({result['mode']}): {result['machine']}")
    runners: Dict[str, Callable[[], Dict[str, Any]]] = {
        "skip_step_sync": lambda: device_check_skip_step.run(device, args.smoke, log),
        "te_fused_adam": lambda: run_te(device, args.smoke),
        "ns_throughput": lambda: device_check_ns.run_speed(device, args.smoke, log),
        "ns_accuracy": lambda: device_check_ns.run_accuracy(device, args.smoke, log),
    }
    result["cuda_checks_run"] = device.type == "cuda"
    for name in args.sections:
        torch.manual_seed(0)
        result["sections"][name] = run_section(name, runners[name])
        _summarize(result, t0)
        if args.json:  # after every section: a run stopped at its time limit still leaves what it found
            _write(result, args.json)
    log("\n== summary ==")
    for name, s in result["sections"].items():
        log(f"  {name:15s} {s['status']:8s} {s['seconds']:7.2f} s" + (f"  ({s['reason']})" if s.get("reason") else ""))
    log(f"  total {result['total_seconds']} s; all passed (skipped not counted): {result['all_passed']}")
    if args.json:
        log(f"  JSON: {args.json}")
    return result


def _summarize(result: Dict[str, Any], t0: float) -> None:
    result["total_seconds"] = round(time.perf_counter() - t0, 2)
    result["all_passed"] = all(s["status"] in ("pass", "skipped") for s in result["sections"].values())
    result["complete"] = len(result["sections"]) == len(result["sections_requested"])


def _write(result: Dict[str, Any], path: str) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    main()
