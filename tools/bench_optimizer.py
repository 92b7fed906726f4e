"""Optimizer step benchmark: our full ``step()`` next to the leanest same-math reference, in one process.

For each GPT-shaped parameter set (``--preset``) and each optimizer:

* **adam**: ours = ``get_megatron_optimizer(adam, bf16=True)`` (bf16 params, fp32 main params, clipping);
  reference = fp32 master copies + ``clip_grad_norm_(foreach=True)`` + ``torch.optim.AdamW`` (fused if
  torch has it for the device, else foreach) + ``torch._foreach_copy_`` back into the bf16 params.
* **muon**: ours = ``get_megatron_optimizer(muon)`` in fp32 with ``muon_fp32_matmul_prec='highest'``
  (KJ 'simple' triple x 5, Nesterov, scale sqrt(max(1, m/n)), no QKV split, Adam for the rest);
  reference = ``torch.optim.Muon`` on the same matrices with the same triple/steps, iterated in fp32
  (its one ``grad.bfloat16()`` cast made a copy: ``tools/bench_muon.torch_muon_in_fp32``), plus
  ``torch.optim.AdamW`` for the non-matrix parameters and the same foreach clip over everything.
* **muon_gram**: ours = the muon config plus ``muon_ns_algorithm="gram"`` (Gram-space NS with restarts
  for matrices >= 1.5:1, square ones keep the standard loop); reference = the same fp32 torch.optim.Muon.
  With muon and muon_gram both requested, the two of ours and the one reference are timed in the same
  interleaved rounds, so each ratio is against the same reference times (and muon_gram also gets a
  ratio against our standard muon).

Both sides start from the same weights and gradients (``main_grad``, as our DDP delivers them); the
largest |Δparam| after the first step is printed to show the reference does the same math. Timings
are interleaved (ours, ref, ref, ours, ...) and reported as the median of per-round ratios with the
IQR, because the machine may be shared. Also: Newton–Schulz FLOP/s against the same GEMMs as plain
``torch.mm`` (per matrix shape; with muon_gram also the Gram-space NS, at the same nominal FLOPs), and
optimizer-state bytes per parameter.

    python tools/bench_optimizer.py --preset small --repeats 5 --json bench.json
    python tools/bench_optimizer.py --preset small --nproc 2    # relaunches itself under torchrun (gloo)
    python -m torch.distributed.run --standalone --nproc_per_node 2 tools/bench_optimizer.py --preset small

Under torchrun with more than one rank (``--nproc N`` starts that itself) it times the layer-wise distributed Muon step per rank
against the duplicated one (every rank orthogonalizes every matrix) and reports the distributed
optimizer's bytes per rank against Megatron's 6+12/d and 8+8/d table (tools/bench_memory.py's worker).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from megatron_opt.config import OptimizerConfig  # noqa: E402
from megatron_opt.emerging.newton_schulz import newton_schulz, orthogonalize  # noqa: E402
from megatron_opt.factory import get_megatron_optimizer  # noqa: E402
from megatron_opt.parallel import ProcessGroupCollection  # noqa: E402
from tools.bench_muon import GRAM, KJ, NS_STEPS, TRIPLES, ns_flops, torch_muon_in_fp32  # noqa: E402
from training.model import GPT, GPTConfig  # noqa: E402


@dataclass(frozen=True)
class Preset:
    layers: int
    hidden: int
    heads: int
    vocab: int
    seq: int


PRESETS: Dict[str, Preset] = {
    "tiny": Preset(2, 32, 2, 64, 16),  # smoke test only
    "small": Preset(4, 256, 4, 512, 128),
    "medium": Preset(8, 512, 8, 8192, 512),
    "gpt124m": Preset(12, 768, 12, 50257, 1024),
}
LR, WD, CLIP = 1e-3, 0.1, 1.0
OPTIMIZERS = ("adam", "muon", "muon_gram")
REFERENCE_OF = {"adam": "adam", "muon": "muon", "muon_gram": "muon"}
"""Which reference each optimizer is timed against; names sharing one are timed in the same rounds."""


def build_model(preset: Preset, dtype: torch.dtype, seed: int = 0) -> GPT:
    """A GPT with fixed weights and fixed fp32 ``main_grad`` on every parameter (same for every call)."""
    cfg = GPTConfig(hidden_size=preset.hidden, num_layers=preset.layers, num_attention_heads=preset.heads,
                    seq_length=preset.seq, vocab_size=preset.vocab, params_dtype=dtype, seed=seed)
    model = GPT(cfg, ProcessGroupCollection.single_process())
    gen = torch.Generator().manual_seed(seed + 1)
    for p in model.parameters():
        p.main_grad = torch.randn(p.shape, generator=gen) * 1e-3
    return model


def is_matrix(p: torch.nn.Parameter) -> bool:
    """What Muon takes (written here independently of the library's routing)."""
    return p.ndim == 2 and not getattr(p, "is_embedding_or_output", False)


def our_config(name: str, **extra) -> OptimizerConfig:
    if name == "adam":
        return OptimizerConfig(optimizer="adam", lr=LR, weight_decay=WD, clip_grad=CLIP, bf16=True, **extra)
    if name == "muon_gram":
        return our_config("muon", muon_ns_algorithm="gram", **extra)
    return OptimizerConfig(optimizer="muon", lr=LR, weight_decay=WD, clip_grad=CLIP, muon_momentum=0.95, muon_nesterov=True,
                           muon_coefficient_type="simple", muon_num_ns_steps=NS_STEPS, muon_scale_mode="shape_scaling",
                           muon_split_qkv=False, muon_fp32_matmul_prec="highest", **extra)


def _adamw(params: List[torch.Tensor]) -> torch.optim.AdamW:
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    fused = params[0].device.type in _get_fused_kernels_supported_devices()
    return torch.optim.AdamW(params, lr=LR, weight_decay=WD, **({"fused": True} if fused else {"foreach": True}))


class LeanAdam:
    """fp32 masters + foreach clip + AdamW + foreach copy into the bf16 params."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model_params = [p for p in model.parameters()]
        self.masters = [p.detach().float().clone().requires_grad_() for p in self.model_params]
        for m, p in zip(self.masters, self.model_params):
            m.grad = p.main_grad
        self.opt = _adamw(self.masters)

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.masters, CLIP, foreach=True)
        self.opt.step()
        torch._foreach_copy_([p.data for p in self.model_params], self.masters)

    def state_tensors(self) -> List[torch.Tensor]:
        return [v for s in self.opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0] + self.masters


class LeanMuon:
    """torch.optim.Muon (fp32) on the matrices + AdamW on the rest, one foreach clip over all."""

    def __init__(self, model: torch.nn.Module) -> None:
        params = list(model.parameters())
        for p in params:
            p.grad = p.main_grad
        self.params = params
        self.muon = torch.optim.Muon([p for p in params if is_matrix(p)], lr=LR, weight_decay=WD, momentum=0.95, nesterov=True,
                                     ns_coefficients=KJ, ns_steps=NS_STEPS, adjust_lr_fn="original")
        self.adam = _adamw([p for p in params if not is_matrix(p)])

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, CLIP, foreach=True)
        with torch_muon_in_fp32():
            self.muon.step()
        self.adam.step()

    def state_tensors(self) -> List[torch.Tensor]:
        return [v for o in (self.muon, self.adam) for s in o.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]


def our_state_tensors(opt) -> List[torch.Tensor]:
    """Every state tensor of every inner optimizer (not the 0-d step counters), plus Float16's fp32 main params."""
    if hasattr(opt, "chained_optimizers"):
        return [t for child in opt.chained_optimizers for t in our_state_tensors(child)]
    out: List[torch.Tensor] = []
    inner = getattr(opt, "optimizer", None)
    if inner is not None:
        out += [v for s in inner.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    for group in getattr(opt, "fp32_from_float16_groups", []):
        out += list(group)
    return out


def _bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def quartiles(xs: Sequence[float]) -> Dict[str, float]:
    xs = sorted(xs)
    if len(xs) == 1:
        return {"median": xs[0], "q1": xs[0], "q3": xs[0]}
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2]}


def interleaved_wall_and_cpu(fns: Dict[str, Callable[[], None]], repeats: int) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """Wall and process-CPU seconds of the same interleaved rounds. On a shared machine the CPU time of
    a single-threaded run is the steadier figure (other processes' load barely moves it)."""
    names = list(fns)
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            w0, c0 = time.perf_counter(), time.process_time()
            fns[n]()
            cpu[n].append(time.process_time() - c0)
            wall[n].append(time.perf_counter() - w0)
    return wall, cpu


def ratio_summary(ours: List[float], ref: List[float]) -> Dict[str, object]:
    return {"ours_s": quartiles(ours), "ref_s": quartiles(ref), "ratio": quartiles([o / r for o, r in zip(ours, ref)]),
            "repeats": len(ours)}


def wall_cpu_summary(wall: Dict[str, List[float]], cpu: Dict[str, List[float]], a: str, b: str) -> Dict[str, object]:
    return {**ratio_summary(wall[a], wall[b]), "cpu": ratio_summary(cpu[a], cpu[b])}


def bench_steps(names: Sequence[str], preset: Preset, repeats: int) -> List[Dict[str, object]]:
    """One entry per name (in the given order); the names sharing a reference are timed in the same rounds."""
    out: Dict[str, Dict[str, object]] = {}
    for ref_name in dict.fromkeys(REFERENCE_OF[n] for n in names):
        out.update(bench_group([n for n in names if REFERENCE_OF[n] == ref_name], ref_name, preset, repeats))
    return [out[n] for n in names]


def bench_group(names: Sequence[str], ref_name: str, preset: Preset, repeats: int) -> Dict[str, Dict[str, object]]:
    """Each of ours (one model and optimizer per name) and the one reference, interleaved in every round."""
    dtype = torch.bfloat16 if ref_name == "adam" else torch.float32
    models = {n: build_model(preset, dtype) for n in names}
    ref_model = build_model(preset, dtype)
    n_params = sum(p.numel() for p in ref_model.parameters())
    ours, rss_delta = {}, {}
    for n in names:
        rss0 = rss_bytes()
        ours[n] = get_megatron_optimizer(our_config(n), [models[n]], config_overrides={})
        ours[n].step()  # warm-up: state, allocator, thread pools
        rss_delta[n] = (rss_bytes() - rss0) / n_params
    rss0 = rss_bytes()
    ref = LeanAdam(ref_model) if ref_name == "adam" else LeanMuon(ref_model)
    ref.step()
    ref_rss_delta = (rss_bytes() - rss0) / n_params
    max_diff = {n: max((a.float() - b.float()).abs().max().item() for a, b in zip(models[n].parameters(), ref_model.parameters()))
                for n in names}  # after the first step of each side
    fns: Dict[str, Callable[[], None]] = {n: ours[n].step for n in names}
    fns["ref"] = ref.step
    wall, cpu = interleaved_wall_and_cpu(fns, repeats)
    res: Dict[str, Dict[str, object]] = {}
    for n in names:
        res[n] = {
            "optimizer": n, "n_params": n_params, "param_dtype": str(dtype).replace("torch.", ""),
            "max_abs_param_diff_after_step1": max_diff[n],
            **wall_cpu_summary(wall, cpu, n, "ref"),
            "state_bytes_per_param": {"ours": _bytes(our_state_tensors(ours[n])) / n_params, "ref": _bytes(ref.state_tensors()) / n_params},
            "rss_delta_bytes_per_param": {"ours": rss_delta[n], "ref": ref_rss_delta},
            "timed_with": [m for m in names if m != n],  # ours-variants in the same rounds (same ref times)
        }
    if "muon" in names and "muon_gram" in names:
        res["muon_gram"]["vs_muon"] = wall_cpu_summary(wall, cpu, "muon_gram", "muon")
    return res


def matrix_shapes(preset: Preset) -> List[Tuple[int, int]]:
    return sorted({tuple(p.shape) for p in build_model(preset, torch.float32).parameters() if is_matrix(p)})


def bench_ns(shape: Tuple[int, int], repeats: int, gram: bool = False) -> Dict[str, object]:
    """Our NS (fp32, 'highest') against exactly its GEMMs as plain ``torch.mm`` into preallocated outputs.

    ``gram``: also the Gram-space NS where ``GRAM`` applies to the shape (``gram_applies``), rated at the
    same nominal FLOPs, so ``gram_fraction_of_matmul`` reads as its speed against the plain GEMMs.
    """
    m, n = min(shape), max(shape)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    xs, xt = torch.randn(m, n, generator=gen), torch.randn(n, m, generator=gen)
    a, g, o = torch.empty(m, m), torch.empty(m, m), torch.empty(m, n)

    def gemms() -> None:
        for _ in range(NS_STEPS):
            torch.mm(xs, xt, out=a)   # X Xᵀ
            torch.mm(a, a, out=g)     # A²
            torch.mm(g, xs, out=o)    # B X

    def ns() -> None:
        newton_schulz(x, NS_STEPS, "simple", precision="highest")

    def ns_gram() -> None:
        orthogonalize(x, TRIPLES, dtype=torch.float32, gram=GRAM)

    fns: Dict[str, Callable[[], None]] = {"ns": ns, "matmul": gemms}
    gram_applies = gram and GRAM.applies_to(m, n)
    if gram_applies:
        fns["gram"] = ns_gram
    for fn in fns.values():
        fn()
    wall, cpu = interleaved_wall_and_cpu(fns, repeats)
    flops = ns_flops(shape)
    res: Dict[str, object] = {"shape": list(shape), "flops": flops}
    if gram:
        res["gram_applies"] = gram_applies
    if gram_applies:  # the same polynomial: the outputs differ by fp32 rounding only
        res["gram_max_abs_diff_vs_ns"] = (orthogonalize(x, TRIPLES, dtype=torch.float32, gram=GRAM)
                                          - newton_schulz(x, NS_STEPS, "simple", precision="highest")).abs().max().item()
    for label, times in (("", wall), ("cpu_", cpu)):
        res[label + "ns_gflops"] = quartiles([flops / t / 1e9 for t in times["ns"]])
        res[label + "matmul_gflops"] = quartiles([flops / t / 1e9 for t in times["matmul"]])
        res[label + "ns_fraction_of_matmul"] = quartiles([tm / tn for tn, tm in zip(times["ns"], times["matmul"])])
        if gram_applies:
            res[label + "gram_gflops"] = quartiles([flops / t / 1e9 for t in times["gram"]])
            res[label + "gram_fraction_of_matmul"] = quartiles([tm / tg for tg, tm in zip(times["gram"], times["matmul"])])
            res[label + "gram_time_vs_ns"] = quartiles([tg / tn for tg, tn in zip(times["gram"], times["ns"])])
    return res


# ---- distributed (torchrun) ----------------------------------------------------------------------


def bench_distributed(preset: Preset, repeats: int) -> Dict[str, object]:
    """Layer-wise Muon vs duplicated Muon step per rank (max over ranks), and bench_memory's byte table."""
    import torch.distributed as dist

    from megatron_opt.distributed import DDPConfig, DistributedDataParallel
    from tools.bench_memory import worker as memory_worker

    pgs = ProcessGroupCollection.initialize(1, 1)

    def make(layer_wise: bool):
        model = build_model(preset, torch.float32)
        ddp = DistributedDataParallel(model, DDPConfig(), pgs)
        gen = torch.Generator().manual_seed(7)
        for p in model.parameters():  # the same fixed gradient on every rank, as after the DP all-reduce
            p.main_grad.copy_(torch.randn(p.shape, generator=gen) * 1e-3)
        return get_megatron_optimizer(our_config("muon", use_layer_wise_distributed_optimizer=layer_wise), [ddp], pg_collection=pgs)

    steps = {"layer_wise": make(True), "duplicated": make(False)}
    for opt in steps.values():
        opt.step()
    local: Dict[str, List[float]] = {k: [] for k in steps}
    for r in range(repeats):
        for k in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            dist.barrier()
            t0 = time.perf_counter()
            steps[k].step()
            local[k].append(time.perf_counter() - t0)
    worst = torch.tensor([local["layer_wise"], local["duplicated"]], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)  # a step is as slow as its slowest rank
    lw, dup = worst[0].tolist(), worst[1].tolist()
    memory = [memory_worker(p) for p in ("bf16", "fp32")]
    return {"world_size": dist.get_world_size(), "muon_step_layer_wise_vs_duplicated": ratio_summary(lw, dup),
            "distributed_optimizer_memory": memory}


# ---- report --------------------------------------------------------------------------------------


def machine() -> Dict[str, object]:
    model_name = ""
    try:
        with open("/proc/cpuinfo") as f:
            model_name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": model_name or platform.processor(), "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": sys.version.split()[0], "loadavg_1min_at_start": load}


def _q(d: Dict[str, float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(d['median'])} [{fmt.format(d['q1'])}, {fmt.format(d['q3'])}]"


def print_report(res: Dict[str, object]) -> None:
    m = res["machine"]
    print(f"machine: {m['cpu']}, {m['nproc']} cpus, torch {m['torch']} ({m['cpu_capability']}), {m['torch_threads']} threads, "
          f"load {m['loadavg_1min_at_start']}")
    print(f"preset {res['preset']} {res['preset_shape']}; {res['repeats']} interleaved repeats; median [IQR]")
    print(f"{'optimizer':9} {'params':>10} {'ours ms':>22} {'ref ms':>22} {'ours/ref wall':>22} {'ours/ref cpu':>22} {'max|dp|':>9} {'state B/p ours/ref':>19}")
    for s in res["steps"]:
        ms = {k: {q: v * 1e3 for q, v in s[k].items()} for k in ("ours_s", "ref_s")}
        print(f"{s['optimizer']:9} {s['n_params']:>10} {_q(ms['ours_s'], '{:.1f}'):>22} {_q(ms['ref_s'], '{:.1f}'):>22} "
              f"{_q(s['ratio']):>22} {_q(s['cpu']['ratio']):>22} {s['max_abs_param_diff_after_step1']:>9.2e} "
              f"{s['state_bytes_per_param']['ours']:>8.2f} / {s['state_bytes_per_param']['ref']:<8.2f}")
        if "vs_muon" in s:
            v = s["vs_muon"]
            print(f"  muon_gram / muon in the same rounds: wall {_q(v['ratio'])}, cpu {_q(v['cpu']['ratio'])}")
    print("Newton-Schulz (simple x 5, fp32) vs the same GEMMs as plain torch.mm (nominal FLOPs 5(4m^2n + 2m^3) for all):")
    for r in res["newton_schulz"]:
        print(f"  {r['shape'][0]:5d}x{r['shape'][1]:<5d} NS {_q(r['ns_gflops'], '{:.1f}')} GFLOP/s, matmul {_q(r['matmul_gflops'], '{:.1f}')} "
              f"GFLOP/s, NS/matmul wall {_q(r['ns_fraction_of_matmul'])}, cpu {_q(r['cpu_ns_fraction_of_matmul'])}")
        if r.get("gram_applies"):
            print(f"  {'':11} gram {_q(r['gram_gflops'], '{:.1f}')} GFLOP/s, gram/matmul wall {_q(r['gram_fraction_of_matmul'])}, "
                  f"cpu {_q(r['cpu_gram_fraction_of_matmul'])}; time gram/NS cpu {_q(r['cpu_gram_time_vs_ns'])}; "
                  f"max|gram - NS| {r['gram_max_abs_diff_vs_ns']:.1e}")
        elif "gram_applies" in r:
            print(f"  {'':11} gram: not taken (aspect ratio < {GRAM.min_aspect_ratio}), the standard loop as above")
    d = res.get("distributed")
    if d:
        lw = d["muon_step_layer_wise_vs_duplicated"]
        print(f"distributed ({d['world_size']} ranks): layer-wise Muon step / duplicated {_q(lw['ratio'])} "
              f"(layer-wise {lw['ours_s']['median'] * 1e3:.1f} ms, duplicated {lw['ref_s']['median'] * 1e3:.1f} ms)")
        for r in d["distributed_optimizer_memory"]:
            print(f"  distributed optimizer {r['precision']}: {r['bytes_per_param']:.3f} B/param per rank, theory {r['theory_per_param']:.3f} "
                  f"(ratio {r['ratio']:.3f})")


def launch_torchrun(nproc: int, argv: List[str]) -> None:
    """``--nproc N`` without torchrun: run this script under ``torchrun --nproc_per_node N`` (gloo)."""
    import subprocess

    # torchrun's own parser would take "--nproc" for an abbreviation of --nproc_per_node: drop it.
    argv = [a for i, a in enumerate(argv) if not (a.startswith("--nproc") or (i > 0 and argv[i - 1] == "--nproc"))]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__, *argv]
    sys.exit(subprocess.run(cmd, env=env).returncode)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--layers", type=int, default=None,
                        help="override the preset's layer count (Muon's step time is linear in it; keeps gpt124m-shaped runs short)")
    parser.add_argument("--optimizers", default="adam,muon", help="comma-separated subset of " + ",".join(OPTIMIZERS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=1, help="ranks (run under torchrun when > 1)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    names = [n for n in args.optimizers.split(",") if n]
    if any(n not in OPTIMIZERS for n in names) or len(set(names)) != len(names) or args.repeats < 1:
        parser.error(f"--optimizers={args.optimizers} / --repeats={args.repeats}: expected distinct names from "
                     f"{','.join(OPTIMIZERS)} and repeats >= 1")
    preset = PRESETS[args.preset]
    if args.layers is not None:
        if args.layers < 1:
            parser.error(f"--layers={args.layers}: expected an integer >= 1")
        preset = dataclasses.replace(preset, layers=args.layers)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.nproc > 1 and world == 1:
        return launch_torchrun(args.nproc, sys.argv[1:] if argv is None else list(argv))
    if world > 1 and args.nproc not in (1, world):
        parser.error(f"--nproc={args.nproc} does not match torchrun's WORLD_SIZE={world}")
    rank = 0
    if world > 1:
        import datetime

        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
        rank = dist.get_rank()

    res: Dict[str, object] = {"machine": machine(), "preset": args.preset, "preset_shape": preset.__dict__, "repeats": args.repeats}
    if rank == 0:
        res["steps"] = bench_steps(names, preset, args.repeats)
        muon_like = "muon" in names or "muon_gram" in names
        res["newton_schulz"] = [bench_ns(s, args.repeats, gram="muon_gram" in names) for s in matrix_shapes(preset)] if muon_like else []
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        res["distributed"] = bench_distributed(preset, args.repeats)
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print_report(res)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
            print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
