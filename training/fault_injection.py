"""Test-only fault injection for the train loop; inert unless its environment variables are set.

The reliability tests need a real rank to die, or a real gradient to go bad, at a known iteration of
a real ``pretrain_gpt.py`` run. Environment variables (not flags) keep this out of the user-facing
CLI and let a test aim at one rank of a torchrun job:

``MEGATRON_OPT_FAULT_KILL_AT_ITER=N``
    after iteration N the chosen rank sends itself SIGKILL (no clean-up, like an OOM kill or a lost
    node) — on the first attempt only (``TORCHELASTIC_RESTART_COUNT`` unset or 0), so a job run
    with ``--max-restarts`` recovers on the next attempt.
``MEGATRON_OPT_FAULT_NAN_GRAD_AT_ITER=N``
    in iteration N, after the gradients are reduced, the chosen rank overwrites its own gradients
    with NaN (a fault that only one data-parallel replica sees).
``MEGATRON_OPT_FAULT_RANK=R``
    the global rank that misbehaves (default 0).
``MEGATRON_OPT_FAULT_SLOW_ERROR_REPORT_S=T``
    rank 0 waits T seconds before it prints a user error (a slow rank 0, as on a loaded machine), so a
    test can show that the other ranks do not end the job before the one error line is out.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from megatron_opt.errors import ConfigError

KILL_AT_ITER = "MEGATRON_OPT_FAULT_KILL_AT_ITER"
NAN_GRAD_AT_ITER = "MEGATRON_OPT_FAULT_NAN_GRAD_AT_ITER"
FAULT_RANK = "MEGATRON_OPT_FAULT_RANK"
RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"
SLOW_ERROR_REPORT_S = "MEGATRON_OPT_FAULT_SLOW_ERROR_REPORT_S"


def _int_env(env: Mapping[str, str], name: str, minimum: int) -> Optional[int]:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError(f"{name}={raw!r} is not allowed; expected an integer >= {minimum}")
    return value


@dataclass(frozen=True)
class FaultPlan:
    """What to break, where and when; ``FaultPlan()`` breaks nothing."""

    kill_at: Optional[int] = None
    nan_grad_at: Optional[int] = None
    rank: int = 0
    attempt: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "FaultPlan":
        return cls(
            kill_at=_int_env(env, KILL_AT_ITER, 1),
            nan_grad_at=_int_env(env, NAN_GRAD_AT_ITER, 1),
            rank=_int_env(env, FAULT_RANK, 0) or 0,
            attempt=_int_env(env, RESTART_COUNT, 0) or 0,
        )

    @property
    def inert(self) -> bool:
        return self.kill_at is None and self.nan_grad_at is None

    def corrupt_grads(self, model: torch.nn.Module, iteration: int, rank: int) -> None:
        """Called between backward (grads reduced) and ``optimizer.step()`` of ``iteration``."""
        if self.nan_grad_at != iteration or rank != self.rank:
            return
        print(f"fault injection: rank {rank} sets its gradients to NaN in iteration {iteration} ({NAN_GRAD_AT_ITER})",
              file=sys.stderr, flush=True)
        with torch.no_grad():
            for p in model.parameters():
                grad = getattr(p, "main_grad", None)
                grad = grad if grad is not None else p.grad
                if grad is not None:
                    grad.fill_(float("nan"))

    def kill_if_due(self, iteration: int, rank: int) -> None:
        """Called after ``iteration`` finished (and after its checkpoint, if one was due)."""
        if self.kill_at != iteration or rank != self.rank or self.attempt != 0:
            return
        print(f"fault injection: rank {rank} kills itself (SIGKILL) after iteration {iteration} ({KILL_AT_ITER})",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def error_report_delay_s(env: Mapping[str, str] = os.environ) -> float:
    """``MEGATRON_OPT_FAULT_SLOW_ERROR_REPORT_S`` (0 when unset): how long rank 0 stalls before reporting."""
    return float(_int_env(env, SLOW_ERROR_REPORT_S, 0) or 0)
