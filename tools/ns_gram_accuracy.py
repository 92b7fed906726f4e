"""Accuracy of the library's Gram-space Newton–Schulz (``--muon-ns-algorithm gram``) against a float64 oracle.

Every path runs the same 5-step polynomial on the same fp32 input; the oracle is that polynomial iterated
in float64 on the same input. Measured: the standard fp32 loop (``orthogonalize(x32, triples)``), the
library's Gram path (``orthogonalize(..., gram=GramSchedule(restart_after=...))``) with the default
restarts and alternatives, and, for context, the standard loop with every matmul input and output
rounded to bf16 (fp32 accumulation), as torch.optim.Muon and Megatron iterate by default. Printed as a
markdown table of ratios to the standard fp32 loop (max |Δ| / relative Frobenius), then the worst ratios.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tools/ns_gram_accuracy.py [--quick] [--restarts none 2,4] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from megatron_opt.emerging.newton_schulz import orthogonalize
from megatron_opt.emerging.newton_schulz_gram import GramSchedule, default_restarts
from megatron_opt.ns_coefficients import Triple, coefficients_for_steps

STEPS = 5
COEFFICIENTS = ("simple", "polar_express")
SHAPES = ((256, 768), (768, 2304), (768, 3072))
QUICK_SHAPES = ((64, 256), (256, 768))
KINDS = ("random", "illcond")
ALTERNATIVES = ((), (2,), (3,), (4,), (2, 4))
Errors = Tuple[float, float]  # max |Δ|, relative Frobenius


def plain_ns(x: torch.Tensor, triples: Sequence[Triple],
             rnd: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """Textbook NS on a normalized matrix with rows <= cols, in ``x``'s dtype; ``rnd`` rounds every matmul
    input and output (identity: the plain loop; ``to_bf16``: bf16 GEMMs with fp32 accumulation)."""
    x = rnd(x)
    for a, b, c in triples:
        A = rnd(x @ x.mT)
        x = rnd(a * x + rnd(b * A + c * (A @ A)) @ x)
    return x


def to_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


def make_input(m: int, n: int, kind: str, seed: int) -> torch.Tensor:
    """float64, Frobenius norm 1; ``illcond`` has singular values log-spaced over 1e-6..1 (before the norm)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        x = torch.randn(m, n, dtype=torch.float64, generator=gen)
    elif kind == "illcond":
        U, _ = torch.linalg.qr(torch.randn(m, m, dtype=torch.float64, generator=gen))
        V, _ = torch.linalg.qr(torch.randn(n, m, dtype=torch.float64, generator=gen))
        x = U @ torch.diag(torch.logspace(-6, 0, m, dtype=torch.float64)) @ V.mT
    else:
        raise ValueError(f"input kind {kind!r}: use one of {', '.join(KINDS)}")
    return x / x.norm()


def errors(y: torch.Tensor, oracle: torch.Tensor) -> Errors:
    d = y.double() - oracle
    return d.abs().max().item(), (d.norm() / oracle.norm()).item()


def label(restarts: Tuple[int, ...]) -> str:
    return "gram " + (",".join(map(str, restarts)) if restarts else "none")


def measure(x: torch.Tensor, triples: Sequence[Triple], restart_sets: Sequence[Tuple[int, ...]]) -> Dict[str, Errors]:
    """Errors of every path on ``x`` (rows <= cols), keyed ``standard``, ``gram <restarts>``, ``bf16``."""
    x32 = x.float()
    x64 = x32.double()
    oracle = plain_ns(x64 / x64.norm(), triples)  # the exact fp32 input every path sees
    out = {"standard": errors(orthogonalize(x32, triples), oracle)}
    for restarts in restart_sets:
        schedule = GramSchedule(restart_after=restarts)
        if not schedule.applies_to(x.size(0), x.size(1)):
            raise ValueError(f"shape {tuple(x.shape)} is too near square for the Gram path")
        out[label(restarts)] = errors(orthogonalize(x32, triples, gram=schedule), oracle)
    out["bf16"] = errors(plain_ns(x32 / x32.norm(), triples, to_bf16), oracle)
    return out


def restart_set(text: str) -> Tuple[int, ...]:
    """``none`` or comma-separated 1-based steps, each in 1..STEPS-1."""
    if text == "none":
        return ()
    try:
        steps = tuple(sorted({int(s) for s in text.split(",")}))
    except ValueError:
        steps = ()
    if not steps or not all(1 <= s < STEPS for s in steps):
        raise argparse.ArgumentTypeError(f"{text!r}: use 'none' or comma-separated steps in 1..{STEPS - 1}, e.g. 2,4")
    return steps


def ratio_cell(e: Errors, base: Errors) -> str:
    return f"{e[0] / base[0]:.2g}× / {e[1] / base[1]:.2g}×"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shapes 64x256 and 256x768 only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--restarts", type=restart_set, nargs="+", metavar="SET",
                        help="restart sets besides the default: 'none' or steps like 2,4 (default: none 2 3 4 2,4)")
    parser.add_argument("--json", metavar="PATH", help="also write the errors as JSON")
    args = parser.parse_args(argv)
    default = default_restarts(STEPS)
    restart_sets = [default] + [r for r in (args.restarts or ALTERNATIVES) if r != default]
    names = ["standard"] + [label(r) for r in restart_sets] + ["bf16"]
    heads = [f"{label(default)} (default)"] + names[2:-1] + ["bf16 standard"]
    print("| coeffs | shape | input | standard fp32 max / fro | " + " | ".join(heads) + " |")
    print("|---" * (4 + len(heads)) + "|")
    cases = []
    for ctype in COEFFICIENTS:
        triples = coefficients_for_steps(ctype, STEPS, None)
        for m, n in QUICK_SHAPES if args.quick else SHAPES:
            for kind in KINDS:
                errs = measure(make_input(m, n, kind, args.seed), triples, restart_sets)
                base = errs["standard"]
                cells = [ctype, f"{m}×{n}", kind, f"{base[0]:.1e} / {base[1]:.1e}"]
                cells += [ratio_cell(errs[k], base) for k in names[1:]]
                print("| " + " | ".join(cells) + " |", flush=True)
                cases.append({"coefficients": ctype, "m": m, "n": n, "input": kind,
                              "errors": {k: {"max_abs": v[0], "rel_fro": v[1]} for k, v in errs.items()}})
    print("\nworst ratio to the standard fp32 loop over all cases (max / fro):")
    for k in names[1:]:
        worst = [max(c["errors"][k][e] / c["errors"]["standard"][e] for c in cases) for e in ("max_abs", "rel_fro")]
        print(f"  {k:12s} {worst[0]:.3g}× / {worst[1]:.3g}×")
    d = label(default)
    least = [min(c["errors"]["bf16"][e] / c["errors"][d][e] for c in cases) for e in ("max_abs", "rel_fro")]
    print(f"bf16 standard error / {d} error, smallest over all cases: {least[0]:.3g}× / {least[1]:.3g}×")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv[1:] if argv is None else argv, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "seed": args.seed, "steps": STEPS,
                       "default_restarts": list(default), "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
