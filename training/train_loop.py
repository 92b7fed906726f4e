"""The training loop: iterations, evaluation, checkpoints, stopping rules, reporting.

One iteration (as Megatron-LM's ``train_step``): zero the DDP grad buffer and the optimizer's grads,
forward/backward over ``num_micro_batches`` micro-batches, hand the reduced loss to the optimizer
(``observe_loss``, for skip-step), ``optimizer.step()``, with ``--qk-clip`` the QK-clip rescale
(megatron_opt.qk_clip), then ``scheduler.step(global_batch_size)``.

Difference from Megatron-LM: the scheduler also steps on a *skipped* iteration. The schedule is
then a function of the consumed samples alone (``scheduler.num_steps == consumed samples``), so
the lr at iteration N does not depend on how many steps were skipped before it, and a resumed run
lands on the same lr as an uninterrupted one. (Megatron-LM holds the lr still on a skipped step.)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
import torch.distributed as dist

from megatron_opt.distributed.distrib_optimizer import finish_param_sync
from megatron_opt.parallel import ProcessGroup, ProcessGroupCollection, all_gather_concat, group_size
from megatron_opt.qk_clip import QKClipResult, clip_qk
from training import checkpoint_glue
from training.checkpoint_glue import Progress
from training.data import BatchIterator, BatchLayout, SampleDataset, microbatches_at
from training.fault_injection import FaultPlan
from training.logging_utils import (
    MetricsWriter,
    Progress as ProgressDisplay,
    format_iteration_line,
    format_validation_line,
    open_tensorboard,
    perplexity,
    tensorboard_write,
)
from training.pipeline import forward_backward, unwrap_model
from training.plotting import plot_training
from training.schedule import train_iters_from_args

EXIT_TOO_MANY_SKIPPED = 3
"""Exit code when --max-skipped-steps consecutive optimizer steps were skipped."""


@dataclass
class Run:
    """Everything start-up built for this rank."""

    args: argparse.Namespace
    pgs: ProcessGroupCollection
    device: torch.device
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    train_data: SampleDataset
    valid_data: Optional[SampleDataset]
    layout: BatchLayout
    qk_clip: Optional[QKClipResult] = None
    """The latest QK-clip result (--qk-clip or --log-max-attention-logit) for the whole model: max logit and
    clipped heads over every layer and head (see ``whole_model_qk_report``)."""

    @property
    def is_logging_rank(self) -> bool:
        """Rank 0 reports: the loss is broadcast from the last stage and reduced over DP, so it has every value."""
        return not dist.is_initialized() or dist.get_rank() == 0


def output_paths(args: argparse.Namespace) -> tuple:
    """(metrics JSONL, plot PNG): the flags, else ``<log dir or save dir>/metrics.jsonl`` / ``training.png``."""
    out_dir = args.log_dir or args.save
    metrics = args.metrics_file or (os.path.join(out_dir, "metrics.jsonl") if out_dir else None)
    plot = args.plot_file or (os.path.join(out_dir, "training.png") if out_dir else None)
    return metrics, plot


@dataclass
class IntervalStats:
    """Megatron-LM's per-log-interval accumulators."""

    iterations: int = 0
    loss_sum: float = 0.0
    advanced: int = 0
    skipped: int = 0
    nan: int = 0
    seconds: float = 0.0

    def add(self, loss: float, skipped: bool, seconds: float) -> None:
        self.iterations += 1
        self.seconds += seconds
        if not math.isfinite(loss):
            self.nan += 1
        if skipped:
            self.skipped += 1
        else:
            self.advanced += 1
            self.loss_sum += loss


class Reporter:
    """Log lines, metrics file, TensorBoard and progress display (only the logging rank writes)."""

    def __init__(self, run: Run, train_iters: int, start_iteration: int):
        args = run.args
        self.run, self.args, self.train_iters = run, args, train_iters
        self.active = run.is_logging_rank
        metrics_path, self.plot_path = output_paths(args)
        self.metrics = MetricsWriter(metrics_path if self.active else None)
        self.metrics_path = metrics_path
        self.tb = open_tensorboard(args.log_dir) if self.active else None
        self.display = ProgressDisplay(train_iters, start_iteration, enabled=self.active and not args.no_progress)
        self.stats = IntervalStats()
        self.tokens_per_iteration = args.global_batch_size * args.seq_length

    def start(self, start_iteration: int) -> None:
        """One line on what runs: layout, batch arithmetic, optimizer, model size, data, outputs."""
        if not self.active:
            return
        a, pgs = self.args, self.run.pgs
        n_params = sum(p.numel() for p in self.run.model.parameters())
        data = a.data_path[-1] if a.data_path else "embedded stdlib text"
        print(f"> pretrain_gpt: tp={pgs.tp_size} pp={pgs.pp_size} dp={pgs.dp_size} | optimizer {a.optimizer}"
              f"{' + distributed optimizer' if (a.use_distributed_optimizer or a.use_layer_wise_distributed_optimizer) else ''}"
              f" ({type(self.run.optimizer).__name__}) | {n_params} parameters on rank 0 | global batch {a.global_batch_size}"
              f" = micro {a.micro_batch_size} x {a.num_micro_batches} micro-batches x dp {pgs.dp_size} | iterations"
              f" {start_iteration}->{self.train_iters} | data: {data} | metrics: {self.metrics_path or 'off'} | plot: {self.plot_path or 'off'}",
              flush=True)

    def iteration(self, progress: Progress, loss: float, skipped: bool, grad_norm: Optional[float],
                  num_zeros: Optional[float], seconds: float) -> None:
        if not self.active:
            return
        optimizer, scheduler = self.run.optimizer, self.run.scheduler
        lr = scheduler.get_canonical_lr_for_logging()
        loss_scale = float(optimizer.get_loss_scale().item())
        self.stats.add(loss, skipped, seconds)
        record = {
            "kind": "train", "iteration": progress.iteration, "consumed_samples": progress.consumed_train_samples,
            "loss": loss, "lr": lr, "grad_norm": grad_norm, "loss_scale": loss_scale, "num_zeros": num_zeros,
            "skipped": skipped, "tokens_per_sec": self.tokens_per_iteration / seconds if seconds > 0 else None,
            "elapsed_ms": seconds * 1000.0,
        }
        if self.run.qk_clip is not None:
            record.update(max_attention_logit=self.run.qk_clip.max_logit, qk_clipped_heads=self.run.qk_clip.clipped_heads)
        self.metrics.write(record)
        tensorboard_write(self.tb, record, ("loss", "lr", "grad_norm", "loss_scale", "num_zeros", "tokens_per_sec"))
        self.display.update(progress.iteration, loss)
        if progress.iteration % self.args.log_interval == 0:
            s = self.stats
            line = format_iteration_line(
                progress.iteration, self.train_iters, progress.consumed_train_samples,
                elapsed_ms=1000.0 * s.seconds / max(1, s.iterations), learning_rate=lr if lr is not None else 0.0,
                global_batch_size=self.args.global_batch_size,
                loss=s.loss_sum / s.advanced if s.advanced else None, loss_scale=loss_scale,
                grad_norm=grad_norm, num_zeros=num_zeros, skipped=s.skipped, nan=s.nan,
                tokens_per_sec=self.tokens_per_iteration * s.iterations / s.seconds if s.seconds > 0 else None,
                max_attention_logit=self.run.qk_clip.max_logit if self.run.qk_clip is not None else None,
            )
            print(line, flush=True)
            self.display.report()
            self.stats = IntervalStats()

    def validation(self, iteration: int, prefix: str, loss: float) -> None:
        if not self.active:
            return
        print(format_validation_line(prefix, loss), flush=True)
        record = {"kind": "valid", "iteration": iteration, "loss": loss, "ppl": perplexity(loss)}
        self.metrics.write(record)
        if self.tb is not None:
            self.tb.add_scalar("validation/lm loss", loss, iteration)

    def message(self, text: str) -> None:
        if self.active:
            print(text, flush=True)

    def finish(self) -> None:
        if not self.active:
            return
        self.display.close()
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()
        if self.plot_path and self.metrics_path and os.path.exists(self.metrics_path):
            plot_training(self.metrics_path, self.plot_path, title=f"{self.args.optimizer}: loss and learning rate")
            print(f"plot written to {self.plot_path}", flush=True)


def _to_device(microbatches: List[tuple], device: torch.device) -> List[tuple]:
    return [(t.to(device, non_blocking=True), l.to(device, non_blocking=True)) for t, l in microbatches]


def evaluate(run: Run) -> Optional[float]:
    """Mean validation loss over --eval-iters global batches (always the same first batches of the split)."""
    if run.valid_data is None or run.args.eval_iters == 0:
        return None
    finish_param_sync(run.optimizer)
    run.model.eval()
    losses = []
    for i in range(run.args.eval_iters):
        micro = _to_device(microbatches_at(run.valid_data, run.layout, i * run.layout.global_batch_size), run.device)
        losses.append(forward_backward(run.model, micro, run.pgs, forward_only=True).loss)
    run.model.train()
    return sum(losses) / len(losses)


def whole_model_qk_report(result: QKClipResult, mp_group: ProcessGroup, device: torch.device) -> QKClipResult:
    """This rank's ``clip_qk`` result -> the whole model's: max of the maxima, sum of the clipped heads over TP x PP.

    ``clip_qk`` already took the max over DP, and every TP rank / pipeline stage holds other heads, so
    this reduces what was measured (nothing is measured again): one gather of two numbers per step, on
    every rank of the model-parallel group (a collective), only with the flags on.
    """
    if group_size(mp_group) == 1:
        return result
    mine = torch.tensor([[result.max_logit, float(result.clipped_heads)]], dtype=torch.float64, device=device)
    rows = all_gather_concat(mine, mp_group, dim=0)
    return QKClipResult(max_logit=float(rows[:, 0].max()), clipped_heads=int(rows[:, 1].sum()))


def train_step(run: Run, microbatches: List[tuple], iteration: int = 0, faults: FaultPlan = FaultPlan()) -> tuple:
    """One iteration; returns (loss, updated, grad_norm, num_zeros). ``faults``: test-only, see fault_injection."""
    run.model.zero_grad_buffer()
    run.optimizer.zero_grad()
    scale_loss = run.optimizer.scale_loss if run.args.fp16 else None
    result = forward_backward(run.model, _to_device(microbatches, run.device), run.pgs, scale_loss=scale_loss)
    faults.corrupt_grads(run.model, iteration, dist.get_rank() if dist.is_initialized() else 0)
    run.optimizer.observe_loss(result.loss)
    updated, grad_norm, num_zeros = run.optimizer.step()
    if run.args.qk_clip or run.args.log_max_attention_logit:
        # also after a skipped step: the logits were measured on the weights as they are
        mine = clip_qk(unwrap_model(run.model).qk_clip_targets(), run.args.qk_clip_threshold,
                       run.args.qk_clip_alpha, run.optimizer, run.pgs.dp, log_only=not run.args.qk_clip)
        run.qk_clip = whole_model_qk_report(mine, run.pgs.mp, run.device)
    run.scheduler.step(run.args.global_batch_size)  # also when skipped: see the module docstring
    return result.loss, bool(updated), grad_norm, num_zeros


def train(run: Run, progress: Progress) -> int:
    """Train until --train-iters (or --exit-interval); returns the process exit code."""
    args = run.args
    train_iters = train_iters_from_args(args)
    reporter = Reporter(run, train_iters, progress.iteration)
    reporter.start(progress.iteration)
    batches = BatchIterator(run.train_data, run.layout, progress.consumed_train_samples)
    consecutive_skipped = 0
    start_iteration = progress.iteration
    faults = FaultPlan.from_env()
    rank = dist.get_rank() if dist.is_initialized() else 0
    saved_at = evaluated_at = None
    exit_code = 0

    def checkpoint() -> Optional[str]:
        nonlocal saved_at
        if not args.save or saved_at == progress.iteration:
            return None
        path = checkpoint_glue.save(args, progress, [run.model], run.optimizer, run.scheduler, run.pgs)
        saved_at = progress.iteration
        reporter.message(f"saved checkpoint at iteration {progress.iteration:8d} to {path}")
        return path

    def validate(prefix: str) -> None:
        nonlocal evaluated_at
        loss = evaluate(run)
        if loss is not None:
            reporter.validation(progress.iteration, prefix, loss)
            evaluated_at = progress.iteration

    while progress.iteration < train_iters:
        start = time.perf_counter()
        loss, updated, grad_norm, num_zeros = train_step(run, next(batches), progress.iteration + 1, faults)
        seconds = time.perf_counter() - start
        progress.iteration += 1
        progress.consumed_train_samples += args.global_batch_size
        consecutive_skipped = 0 if updated else consecutive_skipped + 1
        reporter.iteration(progress, loss, not updated, grad_norm, num_zeros, seconds)

        if args.eval_interval and progress.iteration % args.eval_interval == 0:
            validate(f"iteration {progress.iteration}")
        if args.save and args.save_interval and progress.iteration % args.save_interval == 0:
            checkpoint()
        if args.max_skipped_steps and consecutive_skipped >= args.max_skipped_steps:
            path = checkpoint()
            where = f"; checkpoint saved to {path}" if path else ("" if args.save else "; no checkpoint (--save not set)")
            if reporter.active:
                print(f"error: {consecutive_skipped} optimizer steps in a row were skipped up to iteration {progress.iteration} "
                      f"(--max-skipped-steps={args.max_skipped_steps}){where}; stopping", file=sys.stderr, flush=True)
            exit_code = EXIT_TOO_MANY_SKIPPED
            break
        if args.exit_interval and progress.iteration % args.exit_interval == 0:
            checkpoint()
            reporter.message(f"exiting program at iteration {progress.iteration} (--exit-interval={args.exit_interval})")
            break
        faults.kill_if_due(progress.iteration, rank)

    if start_iteration >= train_iters:
        reporter.message(f"nothing to train: iteration {start_iteration} already reached --train-iters {train_iters}")
    elif exit_code == 0:
        if progress.iteration >= train_iters and evaluated_at != progress.iteration:
            validate("the end of training for val data")
        checkpoint()
    reporter.finish()
    return exit_code
