"""What a training run reports: Megatron-LM log lines, a JSONL metrics file, TensorBoard, progress.

The log line keeps Megatron-LM's fields, widths and number formats so that existing log parsers
work. Our additions: ``max attention logit`` (only with --log-max-attention-logit or --qk-clip,
after ``num zeros``, where Megatron-LM puts ``params norm``) and ``throughput (tokens/s)``,
which comes last.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional, TextIO


def _timestamp() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def format_iteration_line(
    iteration: int,
    train_iters: int,
    consumed_samples: int,
    elapsed_ms: float,
    learning_rate: float,
    global_batch_size: int,
    loss: Optional[float],
    loss_scale: float,
    grad_norm: Optional[float],
    num_zeros: Optional[float],
    skipped: int,
    nan: int,
    tokens_per_sec: Optional[float] = None,
    timestamp: Optional[str] = None,
    max_attention_logit: Optional[float] = None,
) -> str:
    """One Megatron-LM ``training_log`` line (``loss`` None or <= 0: no loss field, as Megatron-LM).

    ``max_attention_logit`` None (the flags are off): no field, so the line is Megatron-LM's as before.
    """
    s = f" [{timestamp or _timestamp()}]"
    s += " iteration {:8d}/{:8d} |".format(iteration, train_iters)
    s += " consumed samples: {:12d} |".format(consumed_samples)
    s += " elapsed time per iteration (ms): {:.1f} |".format(elapsed_ms)
    s += " learning rate: {:.6E} |".format(learning_rate)
    s += " global batch size: {:5d} |".format(global_batch_size)
    if loss is not None and loss > 0.0:
        s += " lm loss: {:.6E} |".format(loss)
    s += " loss scale: {:.1f} |".format(loss_scale)
    if grad_norm is not None:
        s += " grad norm: {:.3f} |".format(grad_norm)
    if num_zeros is not None:
        s += " num zeros: {:.1f} |".format(num_zeros)
    if max_attention_logit is not None:
        s += " max attention logit: {:.3f} |".format(max_attention_logit)
    s += " number of skipped iterations: {:3d} |".format(skipped)
    s += " number of nan iterations: {:3d} |".format(nan)
    if tokens_per_sec is not None:
        s += " throughput (tokens/s): {:.1f} |".format(tokens_per_sec)
    return s


def perplexity(loss: float) -> float:
    """Megatron-LM caps the exponent at 20 so a diverged run still prints a number."""
    return math.exp(min(20.0, loss))


def format_validation_line(prefix: str, loss: float) -> str:
    """``validation loss at <prefix> | lm loss value: X | lm loss PPL: Y |`` framed by dashes, as Megatron-LM."""
    text = f" validation loss at {prefix} | lm loss value: {loss:.6E} | lm loss PPL: {perplexity(loss):.6E} | "
    bar = "-" * (len(text) + 1)
    return f"{bar}\n{text}\n{bar}"


class MetricsWriter:
    """Appends one JSON object per line (a resumed run continues the same file); flushes every write."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self._file: Optional[TextIO] = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")

    def write(self, record: Dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=True) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def open_tensorboard(log_dir: Optional[str]) -> Any:
    """A SummaryWriter when a log directory is given and tensorboard is installed, else None."""
    if not log_dir:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=log_dir)


def tensorboard_write(writer: Any, record: Dict[str, Any], keys: tuple) -> None:
    if writer is None:
        return
    step = record["iteration"]
    for key in keys:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, step)


class Progress:
    """tqdm when installed and stderr is a terminal; otherwise a plain line on stderr at each report()."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.total, self.done = total, initial
        self.enabled = enabled
        self._start, self._start_iter = time.perf_counter(), initial
        self._bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def update(self, iteration: int, loss: Optional[float]) -> None:
        self.done = iteration
        if self._bar is not None:
            self._bar.update(1)
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def report(self) -> None:
        """A plain progress line (called at each log interval) when no tqdm bar is shown."""
        if not self.enabled or self._bar is not None:
            return
        elapsed = time.perf_counter() - self._start
        ran = self.done - self._start_iter
        eta = elapsed / ran * (self.total - self.done) if ran > 0 else float("nan")
        width = 30
        filled = int(width * self.done / max(1, self.total))
        eta_text = f"{eta:.0f}s" if math.isfinite(eta) else "?"
        print(f"progress: [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
              f"({100.0 * self.done / max(1, self.total):.0f}%) elapsed {elapsed:.0f}s eta {eta_text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
