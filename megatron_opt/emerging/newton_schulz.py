"""Newton–Schulz orthogonalization: ``X -> U Vᵀ`` (approximately) for a matrix ``X = U S Vᵀ``.

One step with coefficients ``(a, b, c)`` is ``A = X Xᵀ; B = bA + cA²; X = aX + BX`` on the side whose
Gram is smaller (``c == 0`` is the cubic step ``X = aX + bAX``). The per-step triples come from
``megatron_opt.ns_coefficients`` so the schedule (cycle / repeat-last) lives in one place.

Both ``A = X Xᵀ`` and ``B = bA + cA²`` are symmetric, so from ``SYMMETRIC_MIN_ROWS`` rows on (per device
type) they are computed on blocks, 3 of 4 formed (``symmetric_blocks``): 0.625× of their GEMM FLOPs at
two levels. ``BX`` is a general product and stays one GEMM. The assembled ``A`` is still one tensor, so TP
``distributed`` mode all-reduces it as before. With a ``GramSchedule`` (opt-in), matrices far from square
take the Gram-space iteration instead (``newton_schulz_gram``): the same polynomial in fewer FLOPs.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch

from megatron_opt.config import FP32_MATMUL_PRECISIONS, TP_MODES
from megatron_opt.emerging.newton_schulz_gram import GramSchedule, gram_iterate
from megatron_opt.emerging.symmetric_blocks import gram_update, symmetric_polynomial
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
"""Per device type: a symmetric product of at least this many rows is split into 2×2 blocks (recursively,
so the smallest GEMM has at least half this many rows). On this project's CPU splitting paid from 256
on (NS time 0.94x at 256×1024, 0.79x at 768×3072). Other devices use ``SYMMETRIC_MIN_ROWS_OTHER``: an
unmeasured, cautious guess, since GPU GEMMs of a few hundred rows are bound by launches and occupancy."""
SYMMETRIC_MIN_ROWS_OTHER = 2048
SYRK_MIN_ROWS = 256
"""With ``muon_use_syrk`` (Megatron's flag for its symmetric GEMM kernel), every device splits from here."""


def orthogonalize(
    x: torch.Tensor,
    triples: Sequence[Triple],
    eps: float = 1e-7,
    transpose: Optional[bool] = None,
    tp_group: ProcessGroup = None,
    dtype: torch.dtype = torch.float32,
    symmetric_min_rows: Optional[int] = None,
    gram: Optional[GramSchedule] = None,
) -> torch.Tensor:
    """``newton_schulz`` with the per-step triples and the iteration dtype already resolved.

    ``symmetric_min_rows`` overrides the device's ``SYMMETRIC_MIN_ROWS`` (``muon_use_syrk``, and tests
    forcing a path). ``gram``: take the Gram-space iteration where ``gram.applies_to`` the shape."""
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
    # Under distributed TP the columns are split; every rank decides on the global width alike.
    if gram is not None and gram.applies_to(X0.size(-2), X0.size(-1) * group_size(tp_group)):
        X = gram_iterate(X0, triples, gram.restart_after, tp_group, symmetric_min_rows)
    else:
        X = _iterate(X0, triples, tp_group, symmetric_min_rows)
    X = X.float()
    return X.mT if transpose else X


def _iterate(X: torch.Tensor, triples: Sequence[Triple], tp_group: ProcessGroup, split_rows: int) -> torch.Tensor:
    """The NS steps with three preallocated buffers (Gram, polynomial, ping-pong X); no allocation per step."""
    addmm = torch.baddbmm if X.dim() == 3 else torch.addmm
    rows = X.size(-2)
    A = X.new_empty(X.shape[:-2] + (rows, rows))
    B = torch.empty_like(A)
    Y = torch.empty_like(X)
    for a, b, c in triples:
        gram_update(X, A, 0.0, 1.0, split_rows)  # A = X Xᵀ
        all_reduce(A, tp_group)  # under TP (distributed mode) the only all-reduce of the step
        if c == 0.0:
            addmm(X, A, X, beta=a, alpha=b, out=Y)  # cubic: aX + bAX, no A² and no B
        else:
            symmetric_polynomial(A, b, c, B, split_rows)  # B = bA + cA²
            addmm(X, B, X, beta=a, out=Y)  # X = aX + BX
        X, Y = Y, X
    return X


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
    symmetric_min_rows: Optional[int] = None,
    gram: Optional[GramSchedule] = None,
) -> torch.Tensor:
    """``newton_schulz_tp`` with the per-step triples and the iteration dtype already resolved."""
    if tp_mode not in TP_MODES:
        raise config_error("tp_mode", tp_mode, "one of " + ", ".join(TP_MODES))
    if partition_dim == -1 or group_size(tp_group) == 1:
        partition_dim = None
    if partition_dim not in (None, 0, 1):
        raise config_error("partition_dim", partition_dim, "0, 1, -1 or None")
    if partition_dim is None or tp_mode == "blockwise":
        return orthogonalize(x, triples, eps=eps, dtype=dtype, symmetric_min_rows=symmetric_min_rows, gram=gram)
    dim = partition_dim - 2  # the matrix dimension, also for a 3-D batch
    if tp_mode == "duplicated":
        full = all_gather_concat(x, tp_group, dim=dim)
        out = orthogonalize(full, triples, eps=eps, dtype=dtype, symmetric_min_rows=symmetric_min_rows, gram=gram)
        return out.chunk(group_size(tp_group), dim=dim)[group_rank(tp_group)].contiguous()
    # distributed: rows sharded (dim 0) → iterate on Xᵀ so the Gram XᵀX is over the unsharded columns;
    # cols sharded (dim 1) → iterate on X, Gram X Xᵀ over the rows. Each is a sum of per-shard Grams.
    return orthogonalize(x, triples, eps=eps, transpose=partition_dim == 0, tp_group=tp_group, dtype=dtype,
                         symmetric_min_rows=symmetric_min_rows, gram=gram)
