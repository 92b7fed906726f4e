"""training/pretrain_gpt.py end to end from the command line under real torchrun (gloo, CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchrun_helpers import REPO_ROOT, run_torchrun

from megatron_opt.checkpoint import read_full_checkpoint

pytestmark = pytest.mark.functional

SCRIPT = REPO_ROOT / "training" / "pretrain_gpt.py"
TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
        "--micro-batch-size", "2", "--no-progress"]

# Megatron-LM's training_log line: widths 8/8, 12, 5, 3, 3 and its number formats (a run without the
# max-attention-logit flags must not carry that field: the tests below check ``max_logit`` is None).
LOG_LINE = re.compile(
    r"^ \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] iteration (?P<it>[ \d]{8})/(?P<total>[ \d]{8}) \|"
    r" consumed samples: (?P<consumed>[ \d]{12}) \|"
    r" elapsed time per iteration \(ms\): \d+\.\d \|"
    r" learning rate: \d\.\d{6}E[+-]\d\d \|"
    r" global batch size: (?P<gbs>[ \d]{5}) \|"
    r" lm loss: (?P<loss>\d\.\d{6}E[+-]\d\d) \|"
    r" loss scale: \d+\.\d \|"
    r" grad norm: \d+\.\d{3} \|"
    r"(?: max attention logit: (?P<max_logit>-?\d+\.\d{3}|-?inf|nan) \|)?"  # only with --log-max-attention-logit/--qk-clip
    r" number of skipped iterations: (?P<skipped>[ \d]{3}) \|"
    r" number of nan iterations: (?P<nan>[ \d]{3}) \|"
    r" throughput \(tokens/s\): \d+\.\d \|$"
)
VALID_LINE = re.compile(r"^ validation loss at iteration (\d+) \| lm loss value: \d\.\d{6}E[+-]\d\d \| lm loss PPL: \d\.\d{6}E[+-]\d\d \| $")


def _log_lines(stdout: str) -> list:
    return [m for m in (LOG_LINE.match(line) for line in stdout.splitlines()) if m]


def _train_records(path: Path) -> list:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


def test_tp2_muon_logs_metrics_plot_checkpoint_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    common = [*TINY, "--tensor-model-parallel-size", "2", "--optimizer", "muon", "--muon-fp32-matmul-prec", "highest",
              "--lr", "1e-2", "--log-interval", "2", "--eval-interval", "3", "--eval-iters", "1",
              "--save", str(run_dir), "--load", str(run_dir)]
    out = run_torchrun(SCRIPT, 2, [*common, "--train-iters", "8", "--exit-interval", "4"], timeout=120).stdout

    lines = _log_lines(out)
    assert [int(m["it"]) for m in lines] == [2, 4], out
    assert all(m["max_logit"] is None for m in lines) and "attention logit" not in out
    assert all(int(m["total"]) == 8 and int(m["gbs"]) == 2 and int(m["skipped"]) == 0 and int(m["nan"]) == 0 for m in lines)
    assert [int(m["consumed"]) for m in lines] == [4, 8]
    assert [int(m.group(1)) for m in map(VALID_LINE.match, out.splitlines()) if m] == [3]
    assert (run_dir / "iter_0000004").is_dir() and (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    records = _train_records(run_dir / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    assert set(records[0]) >= {"iteration", "loss", "lr", "grad_norm", "loss_scale", "num_zeros", "skipped", "tokens_per_sec"}
    assert (run_dir / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Same command again: resumes from iteration 4 and finishes; the JSONL continues.
    out = run_torchrun(SCRIPT, 2, [*common, "--train-iters", "8"], timeout=120).stdout
    assert "loaded checkpoint" in out and "at iteration 4" in out
    assert [int(m["it"]) for m in _log_lines(out)] == [6, 8]
    assert "validation loss at the end of training for val data" in out
    assert (run_dir / "iter_0000008").is_dir()
    resumed = _train_records(run_dir / "metrics.jsonl")
    assert [r["iteration"] for r in resumed] == list(range(1, 9))

    # The same 8 iterations without the stop at 4: losses and the final checkpoint are identical, bitwise
    # (model, Muon momentum, the AdamW moments of the scalar params). This run also measures the attention
    # logits (--log-max-attention-logit never touches the weights, so it must not change a bit): at a
    # threshold of 1e-4 nearly every head of the 2 layers x 4 counts, and more than 4 (all that rank 0 holds)
    # shows that the report is summed over TP; the log line carries the JSONL value.
    whole_dir = tmp_path / "whole"
    whole_args = [a if a != str(run_dir) else str(whole_dir) for a in common]
    out = run_torchrun(SCRIPT, 2, [*whole_args, "--train-iters", "8", "--log-max-attention-logit",
                                   "--qk-clip-threshold", "1e-4"], timeout=120).stdout
    whole = _train_records(whole_dir / "metrics.jsonl")
    assert all(4 < r["qk_clipped_heads"] <= 8 for r in whole), [r["qk_clipped_heads"] for r in whole]
    max_logit = {r["iteration"]: r["max_attention_logit"] for r in whole}
    lines = _log_lines(out)
    assert [int(m["it"]) for m in lines] == [2, 4, 6, 8], out
    assert [m["max_logit"] for m in lines] == ["{:.3f}".format(max_logit[int(m["it"])]) for m in lines]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in whole]
    _, resumed_tensors = read_full_checkpoint(str(run_dir))
    _, whole_tensors = read_full_checkpoint(str(whole_dir))
    assert resumed_tensors.keys() == whole_tensors.keys() and len(resumed_tensors) > 20
    for key, tensor in whole_tensors.items():
        assert torch.equal(resumed_tensors[key], tensor), key

    # --finetune in one process (TP=2 checkpoint → TP=1): the model is loaded, iteration and optimizer restart.
    tuned_dir = tmp_path / "tuned"
    out = run_torchrun(SCRIPT, 1, [*TINY, "--optimizer", "muon", "--muon-fp32-matmul-prec", "highest", "--lr", "1e-2",
                                   "--log-interval", "1", "--eval-iters", "0", "--train-iters", "2", "--finetune",
                                   "--load", str(run_dir), "--save", str(tuned_dir)], timeout=120).stdout
    assert "loaded checkpoint" in out
    tuned = _train_records(tuned_dir / "metrics.jsonl")
    assert [r["iteration"] for r in tuned] == [1, 2]
    fresh_first_loss = whole[0]["loss"]
    assert tuned[0]["loss"] < fresh_first_loss - 0.5, (tuned[0]["loss"], fresh_first_loss)  # trained weights, not a new init


def test_dp2_distributed_optimizer_adam_loss_decreases(tmp_path):
    metrics = tmp_path / "m.jsonl"
    out = run_torchrun(SCRIPT, 2, [*TINY, "--optimizer", "adam", "--use-distributed-optimizer", "--lr", "3e-3",
                                   "--train-iters", "20", "--log-interval", "5", "--eval-iters", "0",
                                   "--metrics-file", str(metrics), "--plot-file", str(tmp_path / "p.png")], timeout=120).stdout
    lines = _log_lines(out)
    assert [int(m["it"]) for m in lines] == [5, 10, 15, 20]
    assert all(m["max_logit"] is None for m in lines) and "attention logit" not in out
    assert int(lines[-1]["gbs"]) == 4 and int(lines[-1]["consumed"]) == 80  # DP=2 x micro batch 2
    losses = [r["loss"] for r in _train_records(metrics)]
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    assert (tmp_path / "p.png").is_file()


def _launch(nproc: int, args: list, **extra_env: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), **extra_env)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(SCRIPT), *args]
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_invalid_command_line_is_one_line_and_exit_2():
    # Rank 0 is made slow to report (as on a loaded machine, where CI once lost the line): rank 1 must not
    # end the job first (torchrun stops every rank when one fails).
    proc = _launch(2, [*TINY, "--lr", "1e-3", "--train-iters", "2", "--tensor-model-parallel-size", "3"],
                   MEGATRON_OPT_FAULT_SLOW_ERROR_REPORT_S="2")
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: world size 2 is not allowed with --tensor-model-parallel-size=3 and "
                      "--pipeline-model-parallel-size=1; expected a multiple of tp*pp=3"], proc.stderr
    first_traceback = proc.stderr.find("Traceback")  # torchrun's own report of the failed child comes last
    assert first_traceback == -1 or first_traceback > proc.stderr.index("error:"), proc.stderr
    assert re.search(r"exitcode\s*:\s*2", proc.stderr), proc.stderr[-2000:]


def test_max_skipped_steps_saves_and_exits_nonzero(tmp_path):
    # A tiny grad-norm threshold skips every step: after 2 in a row the run saves and stops with code 3.
    proc = _launch(1, [*TINY, "--lr", "1e-3", "--train-iters", "10", "--grad-norm-skip-threshold", "1e-9",
                       "--max-skipped-steps", "2", "--log-interval", "1", "--save", str(tmp_path)])
    assert re.search(r"exitcode\s*:\s*3", proc.stderr), proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 optimizer steps in a row were skipped" in errors[0] and "--max-skipped-steps=2" in errors[0]
    assert (tmp_path / "iter_0000002").is_dir()
    skipped = [int(m["skipped"]) for m in (LOG_LINE.match(line) for line in proc.stdout.splitlines()) if m]
    assert skipped == [], "a fully skipped interval has no lm loss field (as Megatron-LM)"
    assert "number of skipped iterations:   1 |" in proc.stdout
