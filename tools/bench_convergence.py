"""Convergence benchmark: the small GPT trained by each optimizer on the same tokens, seed and schedule.

Each optimizer is one real ``training/pretrain_gpt.py`` run (a subprocess, single rank) on the
embedded stdlib-source byte data; its ``--metrics-file`` gives the validation curve. Reported:
validation loss at fixed token counts, and the tokens each optimizer needs to reach the first
optimizer's (adam's) final validation loss, linearly interpolated between evaluations. A PNG of the
curves and a JSON file are written. This reports; it asserts nothing about which optimizer wins.

    python tools/bench_convergence.py --optimizers adam,muon --out-dir runs/convergence \\
        --png docs/img/convergence.png --json runs/convergence/convergence.json

Per-optimizer flags (lr, min lr, weight decay, betas/momentum) are in ``OPTIMIZER_FLAGS``; change an
lr with ``--lr muon=2e-2``. Every run shares ``COMMON_FLAGS`` (model, batch, cosine schedule with
warm-up over min(20, iters/10) iterations, clipping) plus ``--train-iters`` and ``--eval-interval``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.plotting import read_metrics  # noqa: E402

# The model of the examples (examples/_launch.sh SMALL_GPT), one rank, 8 x 128 tokens a step; "tiny" is for smoke tests.
MODELS: Dict[str, List[str]] = {
    "small": ["--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4", "--seq-length", "128"],
    "tiny": ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2", "--seq-length", "128"],
}
BATCH_FLAGS = ["--micro-batch-size", "8", "--global-batch-size", "8"]
TOKENS_PER_ITERATION = 8 * 128
COMMON_FLAGS = ["--lr-decay-style", "cosine", "--clip-grad", "1.0"]
OPTIMIZER_FLAGS: Dict[str, List[str]] = {
    # examples/pretrain_adam_tp2.sh
    "adam": ["--optimizer", "adam", "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--lr", "3e-3", "--min-lr", "3e-4",
             "--weight-decay", "0.1"],
    # examples/pretrain_muon_2ranks.sh; embeddings, norms and biases go to Adam with the same lr
    "muon": ["--optimizer", "muon", "--muon-fp32-matmul-prec", "highest", "--muon-momentum", "0.95", "--muon-nesterov",
             "--lr", "1e-2", "--min-lr", "1e-3", "--weight-decay", "0.01"],
    # Lion's usual rule: lr ~ adam/3..10, weight decay ~ adam x3..10
    "lion": ["--optimizer", "lion", "--lr", "5e-4", "--min-lr", "5e-5", "--weight-decay", "0.3"],
}
DEFAULT_FLAGS = ["--lr", "3e-3", "--min-lr", "3e-4", "--weight-decay", "0.1"]


def optimizer_flags(name: str, lr_overrides: Dict[str, str]) -> List[str]:
    flags = list(OPTIMIZER_FLAGS.get(name, ["--optimizer", name] + DEFAULT_FLAGS))
    if name in lr_overrides:
        i = flags.index("--lr")
        flags[i + 1] = lr_overrides[name]
        j = flags.index("--min-lr")
        flags[j + 1] = repr(float(lr_overrides[name]) / 10)
    return flags


def run_one(name: str, args: argparse.Namespace, lr_overrides: Dict[str, str]) -> Dict[str, object]:
    """One pretrain_gpt.py run; returns its flags, wall time and (tokens, val loss) curve."""
    out_dir = Path(args.out_dir) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()
    warmup = min(20, args.train_iters // 10)
    flags = (MODELS[args.model] + BATCH_FLAGS + COMMON_FLAGS + ["--lr-warmup-iters", str(warmup)] + optimizer_flags(name, lr_overrides)
             + ["--train-iters", str(args.train_iters), "--eval-interval", str(args.eval_interval), "--eval-iters", str(args.eval_iters),
                "--log-interval", str(max(1, args.train_iters // 4)), "--seed", str(args.seed), "--metrics-file", str(metrics)])
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("WORLD_SIZE", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "training" / "pretrain_gpt.py"), *flags], env=env, cwd=REPO,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{name}: pretrain_gpt.py exited with {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    valid = read_metrics(str(metrics))["valid"]
    curve = [(r["iteration"] * TOKENS_PER_ITERATION, float(r["loss"])) for r in valid]
    return {"optimizer": name, "flags": flags, "wall_s": wall, "curve": curve}


def tokens_to_reach(curve: Sequence[Tuple[int, float]], target: float) -> Optional[float]:
    """First token count where the validation loss reaches ``target`` (linear between evaluations); None if never."""
    prev: Optional[Tuple[int, float]] = None
    for tokens, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(tokens)
            t0, l0 = prev
            return t0 + (l0 - target) / (l0 - loss) * (tokens - t0)
        prev = (tokens, loss)
    return None


def plot(runs: Sequence[Dict[str, object]], target: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for r in runs:
        xs, ys = zip(*r["curve"])
        ax.plot([x / 1e3 for x in xs], ys, marker="o", markersize=3, label=r["optimizer"])
    ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"{runs[0]['optimizer']} final ({target:.3f})")
    ax.set_xlabel("training tokens (thousands)")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", default="adam,muon", help="comma-separated; the first is the baseline (default adam,muon)")
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--train-iters", type=int, default=300)
    parser.add_argument("--eval-interval", type=int, default=25)
    parser.add_argument("--eval-iters", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--lr", action="append", default=[], metavar="NAME=LR", help="override one optimizer's lr (min lr = lr/10)")
    parser.add_argument("--out-dir", default="runs/convergence")
    parser.add_argument("--png", default=None, help="plot path (default <out-dir>/convergence.png)")
    parser.add_argument("--json", default=None, help="results path (default <out-dir>/convergence.json)")
    args = parser.parse_args(argv)
    names = [n for n in args.optimizers.split(",") if n]
    if not names:
        parser.error(f"--optimizers={args.optimizers!r}: expected at least one name")
    if args.train_iters < 1 or args.eval_interval < 1 or args.eval_iters < 1:
        parser.error("--train-iters, --eval-interval and --eval-iters must be >= 1")
    lr_overrides = {}
    for item in args.lr:
        name, _, value = item.partition("=")
        try:
            float(value)
        except ValueError:
            parser.error(f"--lr={item!r}: expected NAME=LR, e.g. muon=2e-2")
        lr_overrides[name] = value

    runs = []
    for name in names:
        print(f"training {name} ...", flush=True)
        runs.append(run_one(name, args, lr_overrides))
    target = runs[0]["curve"][-1][1]
    total_tokens = runs[0]["curve"][-1][0]
    for r in runs:
        reached = tokens_to_reach(r["curve"], target)
        r["tokens_to_baseline_final"] = reached
        r["fraction_of_baseline_tokens"] = None if reached is None else reached / total_tokens
        r["final_valid_loss"] = r["curve"][-1][1]

    checkpoints = [t for t, _ in runs[0]["curve"]]
    picks = sorted({checkpoints[len(checkpoints) * k // 4 - 1] for k in (1, 2, 3, 4)})
    print(f"validation loss at fixed token counts (baseline {names[0]}, target = its final loss {target:.4f}):")
    print(f"{'optimizer':10}" + "".join(f"{t // 1000:>9}k" for t in picks) + f"{'tokens to target':>18}{'x baseline':>11}{'wall s':>8}")
    for r in runs:
        at = dict(r["curve"])
        reached = r["tokens_to_baseline_final"]
        print(f"{r['optimizer']:10}" + "".join(f"{at.get(t, float('nan')):>10.4f}" for t in picks)
              + (f"{reached:>18.0f}{r['fraction_of_baseline_tokens']:>11.3f}" if reached is not None else f"{'not reached':>18}{'-':>11}")
              + f"{r['wall_s']:>8.0f}")

    png = args.png or str(Path(args.out_dir) / "convergence.png")
    out_json = args.json or str(Path(args.out_dir) / "convergence.json")
    layers, hidden = MODELS[args.model][1], MODELS[args.model][3]
    plot(runs, target, png, f"GPT {layers} layers x {hidden}, stdlib bytes: same tokens, seed, schedule")
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps({"baseline": names[0], "target_valid_loss": target, "baseline_tokens": total_tokens,
                                          "tokens_per_iteration": TOKENS_PER_ITERATION, "model": args.model, "runs": runs}, indent=1))
    print(f"wrote {png} and {out_json}")


if __name__ == "__main__":
    main()
