"""Products whose result is known to be symmetric, computed on blocks: 3 of 4 formed, the 4th mirrored.

torch has no SYRK/SYMM, so a symmetric product costs a full GEMM. Newton–Schulz is full of them: the Gram
``X Xᵀ``, ``bA + cA²`` of a symmetric ``A``, and (in the Gram-space iteration) products of two polynomials
in the same Gram, which commute and so give a symmetric result. From ``split_rows`` rows on, each is done on
2×2 blocks, recursively down to blocks of half that size: 0.75× (one level), 0.625× (two), ... of the GEMM
FLOPs. All functions take matrices or batches (leading batch dims) and write into ``out``/``C`` in place.
"""

from __future__ import annotations

import torch


def gemm_update(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, beta: float, alpha: float) -> None:
    """``out ← beta·out + alpha·x y`` in place (``beta == 0`` ignores what ``out`` held)."""
    if beta == 0.0 and alpha == 1.0:
        (torch.bmm if out.dim() == 3 else torch.mm)(x, y, out=out)
    elif out.dim() == 3:
        out.baddbmm_(x, y, beta=beta, alpha=alpha)
    else:
        out.addmm_(x, y, beta=beta, alpha=alpha)


def _mirror_upper(C: torch.Tensor, h: int) -> None:
    C[..., h:, :h].copy_(C[..., :h, h:].mT)


def gram_update(X: torch.Tensor, C: torch.Tensor, beta: float, alpha: float, split_rows: int) -> None:
    """``C ← beta·C + alpha·X Xᵀ`` for a symmetric ``C``, on the row halves of ``X``."""
    m = X.size(-2)
    if m < split_rows:
        gemm_update(C, X, X.mT, beta, alpha)
        return
    h = (m + 1) // 2
    X1, X2 = X[..., :h, :], X[..., h:, :]
    gram_update(X1, C[..., :h, :h], beta, alpha, split_rows)
    gram_update(X2, C[..., h:, h:], beta, alpha, split_rows)
    gemm_update(C[..., :h, h:], X1, X2.mT, beta, alpha)
    _mirror_upper(C, h)


def symmetric_polynomial(A: torch.Tensor, b: float, c: float, out: torch.Tensor, split_rows: int) -> None:
    """``out ← bA + cA²`` for a symmetric ``A = [[P, Q], [Qᵀ, R]]`` (``out`` must not alias ``A``).

    ``out11 = bP + c(P² + QQᵀ)``, ``out22 = bR + c(R² + QᵀQ)`` (symmetric again: recurse),
    ``out12 = bQ + c(PQ + QR)`` (two general GEMMs), ``out21 = out12ᵀ`` mirrored.
    """
    m = A.size(-2)
    if m < split_rows:
        (torch.baddbmm if A.dim() == 3 else torch.addmm)(A, A, A, beta=b, alpha=c, out=out)
        return
    h = (m + 1) // 2
    P, Q, R = A[..., :h, :h], A[..., :h, h:], A[..., h:, h:]
    out11, out12, out22 = out[..., :h, :h], out[..., :h, h:], out[..., h:, h:]
    symmetric_polynomial(P, b, c, out11, split_rows)
    gram_update(Q, out11, 1.0, c, split_rows)
    symmetric_polynomial(R, b, c, out22, split_rows)
    gram_update(Q.mT, out22, 1.0, c, split_rows)
    out12.copy_(Q)
    gemm_update(out12, P, Q, b, c)
    gemm_update(out12, Q, R, 1.0, c)
    _mirror_upper(out, h)


def commuting_product(X: torch.Tensor, Y: torch.Tensor, out: torch.Tensor, beta: float, split_rows: int) -> None:
    """``out ← beta·out + X Y`` for symmetric ``X``, ``Y`` that commute (so ``X Y`` is symmetric).

    Only the upper block row panels are formed: with ``k`` panels that is ``(k+1)/2k`` of the GEMM
    (``k`` = 2, 4, ... while a panel keeps at least ``split_rows / 2`` rows, the same depth as the
    recursion above); the strictly lower blocks are mirrored. ``out`` must not alias ``X`` or ``Y``, and
    with ``beta != 0`` must hold a symmetric matrix (only its upper panels are read).
    """
    m = out.size(-2)
    k = 1
    while m // (2 * k) >= max(1, split_rows // 2) and m >= split_rows * k:
        k *= 2
    if k == 1:
        gemm_update(out, X, Y, beta, 1.0)
        return
    bounds = [m * i // k for i in range(k + 1)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        gemm_update(out[..., lo:hi, lo:], X[..., lo:hi, :], Y[..., :, lo:], beta, 1.0)
    for lo, hi in zip(bounds[1:-1], bounds[2:]):
        out[..., lo:hi, :lo].copy_(out[..., :lo, lo:hi].mT)


__all__ = ["gemm_update", "gram_update", "symmetric_polynomial", "commuting_product"]
