"""Accuracy experiment for a Gram-space Newton–Schulz with restarts (issue #9); not used by the library.

Gram-space NS keeps ``X = Q·X0`` implicit: with ``A = X Xᵀ`` one step ``(a, b, c)`` is ``B = bA + cA²``,
``P = aI + B``, ``Q ← P Q``, ``A ← P A P`` (all m×m), and only at a restart (and at the end) is
``X = Q X0`` formed and ``A`` recomputed from it. Two ways of holding ``Q`` are compared:
``P``-form (``Q`` itself) and identity-free (``Q = qI + R``, ``R ← aR + qB + BR``, ``X = qX0 + RX0``).

Every variant runs in fp32 and is compared with the same polynomial iterated in float64 (the oracle);
the reference error is plain fp32 NS (``X ← aX + BX``) and our ``orthogonalize`` (symmetric blocks).
Prints one line per case: max-abs and relative-Frobenius error, and each variant's ratio to plain fp32.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tools/ns_gram_accuracy.py [--quick]
"""

from __future__ import annotations

import argparse
from typing import Sequence, Set, Tuple

import torch

from megatron_opt.emerging.newton_schulz import orthogonalize
from megatron_opt.ns_coefficients import Triple, coefficients_for_steps


def plain_ns(x: torch.Tensor, triples: Sequence[Triple]) -> torch.Tensor:
    for a, b, c in triples:
        A = x @ x.mT
        x = a * x + (b * A + c * (A @ A)) @ x
    return x


def gram_restart_ns(x0: torch.Tensor, triples: Sequence[Triple], restart_after: Set[int], identity_free: bool) -> torch.Tensor:
    """``restart_after`` holds 1-based step numbers after which ``X`` is formed and ``A`` recomputed."""
    m = x0.size(0)
    eye = torch.eye(m, dtype=x0.dtype)
    A = x0 @ x0.mT
    q, R = None, None  # Q = q·I + R (identity-free) or Q = R (P-form, q = 0)
    for step, (a, b, c) in enumerate(triples, start=1):
        B = b * A + c * (A @ A)
        P = a * eye + B
        if identity_free:
            q, R = (a, B) if q is None else (a * q, a * R + q * B + B @ R)
        else:
            q, R = (0.0, P) if q is None else (0.0, P @ R)
        if step == len(triples) or step in restart_after:
            x0 = q * x0 + R @ x0
            A, q, R = x0 @ x0.mT, None, None
        else:
            A = P @ A @ P
            A = 0.5 * (A + A.mT)
    return x0


def make_input(m: int, n: int, kind: str) -> torch.Tensor:
    """float64, Frobenius norm 1; ``illcond`` has singular values log-spaced over 1e-6..1."""
    if kind == "random":
        x = torch.randn(m, n, dtype=torch.float64)
    else:
        U, _ = torch.linalg.qr(torch.randn(m, m, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(n, m, dtype=torch.float64))
        x = U @ torch.diag(torch.logspace(-6, 0, m, dtype=torch.float64)) @ V.mT
    return x / x.norm()


def errors(y: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    d = y.double() - ref
    return d.abs().max().item(), (d.norm() / ref.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--restart-after", type=int, nargs="*", default=[3])
    args = parser.parse_args()
    shapes = [(64, 256), (256, 768)] + ([] if args.quick else [(768, 2304), (768, 3072)])
    torch.manual_seed(args.seed)
    cases = [(m, n, kind, make_input(m, n, kind)) for m, n in shapes for kind in ("random", "illcond")]
    variants = {
        "no-restart P": (set(), False),
        "restart P": (set(args.restart_after), False),
        "restart id-free": (set(args.restart_after), True),
    }
    for ctype in ("simple", "polar_express"):
        triples = coefficients_for_steps(ctype, 5, None)
        for m, n, kind, x in cases:
            oracle = plain_ns(x, triples)
            x32 = x.float()
            base_max, base_fro = errors(plain_ns(x32, triples), oracle)
            cells = [f"{ctype:13s} {m}x{n:<5d} {kind:7s} plain max {base_max:.1e} fro {base_fro:.1e}"]
            named = {"ours": orthogonalize(x32.clone(), triples)}
            named.update({k: gram_restart_ns(x32, triples, r, f) for k, (r, f) in variants.items()})
            for name, y in named.items():
                e_max, e_fro = errors(y, oracle)
                cells.append(f"{name} {e_max:.1e} ({e_max / base_max:.1f}x) fro {e_fro:.1e} ({e_fro / base_fro:.1f}x)")
            U, _, Vh = torch.linalg.svd(x, full_matrices=False)
            polar = U @ Vh
            cells.append(f"oracle vs polar fro {(oracle - polar).norm() / polar.norm():.2f}")
            print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
