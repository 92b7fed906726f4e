"""Gram-space Newton–Schulz with restarts: the same polynomial as the plain iteration, fewer FLOPs.

For an m×n ``X`` (m ≤ n) every NS step maps ``X ↦ p(XXᵀ)·X`` with ``p(R) = aI + bR + cR²``. So after a
few steps ``X = Q·X₀`` where ``Q`` is a polynomial in ``R₀ = X₀X₀ᵀ``, and the Gram follows in m×m alone:
``R ← R·p(R)²``. The long side n is touched only for ``R₀`` and for forming ``X = Q·X₀``, instead of twice
per step. Every m×m product here is of polynomials in one ``R₀``, hence commuting and symmetric, and is
formed on 3 of 4 blocks (``symmetric_blocks``).

In floating point, ``Q`` accumulates rounding that the plain iteration would have washed out by
re-forming ``X``, most on ill-conditioned input; a *restart* forms ``X = Q·X₀`` after a given step and
starts over from its fresh Gram (Zhang, Amsel, Chen & Dao, "Gram Newton-Schulz", 2026). The error
figures behind the default restart are in docs/muon.md.

Cost in units of m³ with r = n/m and two-level blocks: a segment of L steps is ``3.25r + 1.25 + 5(L−1)``
(L = 1 is exactly one plain symmetric-block step, ``3.25r + 1.25``); torch's plain loop is ``4r + 2`` per
step. Five steps with one restart: ``6.5r + 17.5`` against ``16.25r + 6.25`` for our plain loop, so it
pays from r ≈ 1.2 on (0.52× torch's FLOPs for a d=768 GPT layer, square matrices left plain). Under TP
``distributed`` mode only each segment's first Gram is all-reduced (2 all-reduces instead of 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from megatron_opt.emerging.symmetric_blocks import commuting_product, gemm_update, gram_update, symmetric_polynomial
from megatron_opt.ns_coefficients import Triple
from megatron_opt.parallel import ProcessGroup, all_reduce


@dataclass(frozen=True)
class GramSchedule:
    """When the Gram-space iteration is used, and where it restarts."""

    restart_after: Tuple[int, ...] = (3,)
    """1-based NS steps after which ``X`` is formed and its Gram recomputed."""
    min_aspect_ratio: float = 1.5
    """Only where the side the iteration does not square is ≥ this × the Gram's side; nearer square
    (or the other way round, as TP ``distributed`` mode can force) the plain loop is cheaper."""

    def applies_to(self, gram_side: int, other_side: int) -> bool:
        return other_side >= self.min_aspect_ratio * gram_side


def default_restarts(steps: int) -> Tuple[int, ...]:
    """After every 3rd step. Where the restart sits matters, not only segment length: for 5 steps, after
    step 3 kept the fp32 error within 3.4x of the standard loop (docs/muon.md); after step 2 or 4 it was
    up to 25-34x on ill-conditioned input, and with no restart 300x+."""
    return tuple(range(3, steps, 3))


def segments(triples: Sequence[Triple], restart_after: Sequence[int]) -> List[List[Triple]]:
    """Split the steps at the restarts (restarts at or beyond the last step are no-ops)."""
    cuts = sorted({s for s in restart_after if 0 < s < len(triples)})
    bounds = [0] + cuts + [len(triples)]
    return [list(triples[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]


def gram_iterate(X: torch.Tensor, triples: Sequence[Triple], restart_after: Sequence[int],
                 tp_group: ProcessGroup, split_rows: int) -> torch.Tensor:
    """The NS steps on a row-major normalized ``X`` (…, m, n), m ≤ n; returns a new tensor (``X`` is overwritten).

    ``tp_group`` (distributed mode): ``X`` holds some of the columns, its Gram is a partial sum; ``Q`` is
    then the same on every rank and ``Q·X₀`` stays local.
    """
    m = X.size(-2)
    R = X.new_empty(X.shape[:-2] + (m, m))
    Z, Q, S, T = (torch.empty_like(R) for _ in range(4))
    Y = torch.empty_like(X)
    for segment in segments(triples, restart_after):
        gram_update(X, R, 0.0, 1.0, split_rows)  # R = X Xᵀ
        all_reduce(R, tp_group)
        for j, (a, b, c) in enumerate(segment):
            if c == 0.0:
                torch.mul(R, b, out=Z)
            else:
                symmetric_polynomial(R, b, c, Z, split_rows)  # Z = bR + cR²
            if j == 0:
                Q.copy_(Z)
                Q.diagonal(dim1=-2, dim2=-1).add_(a)  # Q = aI + Z
            else:
                S.copy_(Q)
                commuting_product(Q, Z, S, a, split_rows)  # Q ← aQ + QZ
                Q, S = S, Q
            if j + 1 < len(segment):  # R ← R·(aI + Z)², as W = aR + RZ, then aW + ZW
                S.copy_(R)
                commuting_product(R, Z, S, a, split_rows)
                T.copy_(S)
                commuting_product(Z, S, T, a, split_rows)
                R, T = T, R
        gemm_update(Y, Q, X, 0.0, 1.0)  # X = Q X₀
        X, Y = Y, X
    return X


__all__ = ["GramSchedule", "default_restarts", "gram_iterate", "segments"]
