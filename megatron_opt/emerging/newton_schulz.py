"""Newton–Schulz orthogonalization: ``X -> U Vᵀ`` (approximately) for a matrix ``X = U S Vᵀ``.

One step with coefficients ``(a, b, c)`` is ``A = X Xᵀ; B = bA + cA²; X = aX + BX`` on the side whose
Gram is smaller (``c == 0`` is the cubic step ``X = aX + bAX``). The per-step triples come from
``megatron_opt.ns_coefficients`` so the schedule (cycle / repeat-last) lives in one place.

torch has no SYRK/SYMM, so a symmetric product costs a full GEMM. From ``SYMMETRIC_MIN_ROWS`` rows on
(per device type; without a TP group) the iteration works on two row blocks and forms only 3 of the 4 blocks of ``A``
and of ``B``: the step then costs ``0.75·(2m²n + 2m³) + 2m²n`` instead of ``4m²n + 2m³`` FLOPs (0.83x
for a square matrix, 0.86x for a 768×3072 one). Smaller Grams keep the three plain GEMMs, where the
half-size GEMMs would lose more in efficiency than the FLOPs save.

Tensor parallelism (``newton_schulz_tp``): ``duplicated`` gathers the shards and runs the full iteration
on every rank; ``distributed`` keeps the shards and all-reduces the squared norm and every Gram
(exact: the Gram is taken over the unsharded dimension); ``blockwise`` treats each shard as its own
matrix (the update then depends on the TP size).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch

from megatron_opt.config import FP32_MATMUL_PRECISIONS, TP_MODES
from megatron_opt.errors import config_error
from megatron_opt.ns_coefficients import Triple, coefficients_for_steps
from megatron_opt.parallel import ProcessGroup, all_gather_concat, all_reduce, group_rank, group_size

# torch.set_float32_matmul_precision has no "low"; both low and medium mean "iterate in bf16".
_TORCH_PRECISION = {"low": "medium", "medium": "medium", "high": "high", "highest": "highest"}


def validate_precision(precision: str, field: str = "fp32_matmul_prec") -> None:
    if precision not in FP32_MATMUL_PRECISIONS:
        raise config_error(field, precision, "one of " + ", ".join(FP32_MATMUL_PRECISIONS))


@contextlib.contextmanager
def fp32_matmul_precision(precision: str) -> Iterator[None]:
    """Set ``torch.set_float32_matmul_precision`` for the block and restore the previous value after.

    ``high`` allows TF32 on GPUs; ``low``/``medium`` additionally make ``newton_schulz`` (with
    ``precision=None``) run its iterations in bf16, as Emerging-Optimizers does.
    """
    validate_precision(precision)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(_TORCH_PRECISION[precision])
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def iteration_dtype(precision: Optional[str]) -> torch.dtype:
    """bf16 for low/medium, fp32 otherwise; ``None`` reads torch's current float32 matmul precision."""
    if precision is None:
        return torch.bfloat16 if torch.get_float32_matmul_precision() == "medium" else torch.float32
    validate_precision(precision)
    return torch.bfloat16 if precision in ("low", "medium") else torch.float32


def newton_schulz(
    x: torch.Tensor,
    steps: int,
    coefficient_type: str = "quintic",
    custom_coefficients: Optional[Sequence[Triple]] = None,
    eps: float = 1e-7,
    transpose: Optional[bool] = None,
    tp_group: ProcessGroup = None,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """Orthogonalize a 2-D fp32 matrix or a 3-D batch of same-shape fp32 matrices.

    ``transpose=None`` iterates on the smaller Gram (transposes when rows > cols). ``tp_group``
    (distributed mode) means ``x`` is a shard and the Gram ``X Xᵀ`` is a partial sum over the
    group; the caller picks ``transpose`` so that this holds. Returns a new fp32 tensor.
    """
    triples = coefficients_for_steps(coefficient_type, steps, custom_coefficients)
    return orthogonalize(x, triples, eps=eps, transpose=transpose, tp_group=tp_group, dtype=iteration_dtype(precision))


SYMMETRIC_MIN_ROWS = {"cpu": 256}
"""Per device type: from this Gram size on (the short side), one NS step forms only 3 of the 4 blocks of
the symmetric ``A = X Xᵀ`` and of ``A²`` (``_iterate_symmetric_blocks``). On this project's CPU it paid
from 256 on (0.91x NS time at 256², 0.82x at 768×3072). Other devices use ``SYMMETRIC_MIN_ROWS_OTHER``:
an unmeasured, cautious guess, since GPU GEMMs of a few hundred rows are bound by launches and occupancy."""
SYMMETRIC_MIN_ROWS_OTHER = 2048


def orthogonalize(
    x: torch.Tensor,
    triples: Sequence[Triple],
    eps: float = 1e-7,
    transpose: Optional[bool] = None,
    tp_group: ProcessGroup = None,
    dtype: torch.dtype = torch.float32,
    symmetric_min_rows: Optional[int] = None,
) -> torch.Tensor:
    """``newton_schulz`` with the per-step triples and the iteration dtype already resolved.

    ``symmetric_min_rows`` overrides the device's ``SYMMETRIC_MIN_ROWS`` (tests use it to force a path)."""
    if x.dim() not in (2, 3):
        raise TypeError(f"newton_schulz expects a 2-D matrix or a 3-D batch of matrices, got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise TypeError(f"newton_schulz expects float32 input, got {x.dtype}")
    if transpose is None:
        transpose = x.size(-2) > x.size(-1)
    X = x.mT if transpose else x

    # Normalize by the (global) Frobenius norm so every singular value is <= 1.
    sq_norm = X.square().sum(dim=(-2, -1), keepdim=True)
    all_reduce(sq_norm, tp_group)
    # One fresh row-major tensor (cast on the fly for bf16) that the iteration may overwrite.
    X0 = torch.empty(X.shape, dtype=dtype, device=X.device)
    torch.div(X, sq_norm.sqrt_().clamp_(min=eps), out=X0)
    if symmetric_min_rows is None:
        symmetric_min_rows = SYMMETRIC_MIN_ROWS.get(X0.device.type, SYMMETRIC_MIN_ROWS_OTHER)
    if X0.size(-2) >= symmetric_min_rows and group_size(tp_group) == 1:
        X = _iterate_symmetric_blocks(X0, triples)
    else:
        X = _iterate(X0, triples, tp_group)
    X = X.float()
    return X.mT if transpose else X


def _iterate(X: torch.Tensor, triples: Sequence[Triple], tp_group: ProcessGroup) -> torch.Tensor:
    """The NS steps with three preallocated buffers (Gram, polynomial, ping-pong X); no allocation per step."""
    batched = X.dim() == 3
    mm = torch.bmm if batched else torch.mm
    addmm = torch.baddbmm if batched else torch.addmm
    rows = X.size(-2)
    A = X.new_empty(X.shape[:-2] + (rows, rows))
    B = torch.empty_like(A)
    Y = torch.empty_like(X)
    for a, b, c in triples:
        # Plain GEMMs (see the module docstring for the symmetric-block variant); under TP the only
        # all-reduce per step is on the small Gram.
        mm(X, X.mT, out=A)
        all_reduce(A, tp_group)
        if c == 0.0:
            addmm(X, A, X, beta=a, alpha=b, out=Y)  # cubic: aX + bAX, no A² and no B
        else:
            addmm(A, A, A, beta=b, alpha=c, out=B)  # B = bA + cA²
            addmm(X, B, X, beta=a, out=Y)  # X = aX + BX
        X, Y = Y, X
    return X


def _add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    """``out += alpha · a b`` for matrices or batches of matrices."""
    if out.dim() == 3:
        out.baddbmm_(a, b, alpha=alpha)
    else:
        out.addmm_(a, b, alpha=alpha)


def _iterate_symmetric_blocks(X: torch.Tensor, triples: Sequence[Triple]) -> torch.Tensor:
    """The same NS steps on the row blocks ``X = [X1; X2]``, using that ``A`` and ``B = bA + cA²`` are symmetric.

    With ``A = [[P, Q], [Qᵀ, R]]`` only P, Q, R are formed (3 of 4 Gram blocks) and
    ``B11 = bP + c(P² + QQᵀ)``, ``B12 = bQ + c(PQ + QR)``, ``B22 = bR + c(QᵀQ + R²)`` (6 of 8 half-size
    products; ``B21 = B12ᵀ`` is never formed). ``X ← aX + BX`` then reads B12 transposed. Every product is
    a GEMM into a preallocated buffer; the FLOPs of the two symmetric products drop to 0.75x.
    """
    batched = X.dim() == 3
    mm = torch.bmm if batched else torch.mm
    addmm = torch.baddbmm if batched else torch.addmm
    m = X.size(-2)
    h = (m + 1) // 2
    lead = X.shape[:-2]
    X1, X2 = X[..., :h, :].contiguous(), X[..., h:, :].contiguous()
    Y1, Y2 = torch.empty_like(X1), torch.empty_like(X2)
    P, Q, R = (X.new_empty(lead + s) for s in ((h, h), (h, m - h), (m - h, m - h)))
    C11, C12, C22 = torch.empty_like(P), torch.empty_like(Q), torch.empty_like(R)
    for a, b, c in triples:
        mm(X1, X1.mT, out=P)
        mm(X1, X2.mT, out=Q)
        mm(X2, X2.mT, out=R)
        if c == 0.0:  # cubic: X = aX + bAX, B = bA is never formed
            B11, B12, B22, scale = P, Q, R, b
        else:
            B11, B12, B22, scale = C11, C12, C22, 1.0
            addmm(P, P, P, beta=b, alpha=c, out=B11)
            addmm(Q, P, Q, beta=b, alpha=c, out=B12)
            addmm(R, R, R, beta=b, alpha=c, out=B22)
            _add_product(B11, Q, Q.mT, c)
            _add_product(B12, Q, R, c)
            _add_product(B22, Q.mT, Q, c)
        addmm(X1, B11, X1, beta=a, alpha=scale, out=Y1)
        addmm(X2, B22, X2, beta=a, alpha=scale, out=Y2)
        _add_product(Y1, B12, X2, scale)
        _add_product(Y2, B12.mT, X1, scale)
        X1, Y1 = Y1, X1
        X2, Y2 = Y2, X2
    return torch.cat([X1, X2], dim=-2)


def newton_schulz_tp(
    x: torch.Tensor,
    steps: int,
    coefficient_type: str = "quintic",
    tp_group: ProcessGroup = None,
    partition_dim: Optional[int] = None,
    tp_mode: str = "duplicated",
    custom_coefficients: Optional[Sequence[Triple]] = None,
    eps: float = 1e-7,
    precision: Optional[str] = None,
) -> torch.Tensor:
    """Newton–Schulz on a tensor-parallel shard; returns this rank's shard of the result.

    ``partition_dim`` is the sharded matrix dimension (0 = rows, 1 = cols; for a 3-D batch it still
    names the matrix dimension). ``None`` (or -1, or a group of one) means unsharded.
    """
    triples = coefficients_for_steps(coefficient_type, steps, custom_coefficients)
    return orthogonalize_tp(x, triples, tp_group, partition_dim, tp_mode, eps=eps, dtype=iteration_dtype(precision))


def orthogonalize_tp(
    x: torch.Tensor,
    triples: Sequence[Triple],
    tp_group: ProcessGroup,
    partition_dim: Optional[int],
    tp_mode: str,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``newton_schulz_tp`` with the per-step triples and the iteration dtype already resolved."""
    if tp_mode not in TP_MODES:
        raise config_error("tp_mode", tp_mode, "one of " + ", ".join(TP_MODES))
    if partition_dim == -1 or group_size(tp_group) == 1:
        partition_dim = None
    if partition_dim not in (None, 0, 1):
        raise config_error("partition_dim", partition_dim, "0, 1, -1 or None")
    if partition_dim is None or tp_mode == "blockwise":
        return orthogonalize(x, triples, eps=eps, dtype=dtype)
    dim = partition_dim - 2  # the matrix dimension, also for a 3-D batch
    if tp_mode == "duplicated":
        full = all_gather_concat(x, tp_group, dim=dim)
        out = orthogonalize(full, triples, eps=eps, dtype=dtype)
        return out.chunk(group_size(tp_group), dim=dim)[group_rank(tp_group)].contiguous()
    # distributed: rows sharded (dim 0) → iterate on Xᵀ so the Gram XᵀX is over the unsharded columns;
    # cols sharded (dim 1) → iterate on X, Gram X Xᵀ over the rows. Each is a sum of per-shard Grams.
    return orthogonalize(x, triples, eps=eps, transpose=partition_dim == 0, tp_group=tp_group, dtype=dtype)
