"""tools/plot_schedule.py: the plotted points are the scheduler's values in Megatron-LM's sample units."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from megatron_opt.scheduler import OptimizerParamScheduler

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("plot_schedule_tool", ROOT / "tools" / "plot_schedule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Groups:
    def __init__(self):
        self.param_groups = [{"params": []}]


def test_png_and_lr_wd_samples_equal_the_scheduler(tmp_path):
    out, samples_json = tmp_path / "s.png", tmp_path / "s.json"
    argv = ["--world-size", "4", "--micro-batch-size", "2", "--train-iters", "50", "--lr", "1e-3", "--min-lr", "1e-4",
            "--lr-decay-style", "cosine", "--lr-warmup-iters", "5", "--lr-decay-iters", "40", "--lr-warmup-init", "1e-5",
            "--weight-decay-incr-style", "linear", "--start-weight-decay", "0.0", "--end-weight-decay", "0.1",
            "--out", str(out), "--json", str(samples_json)]
    assert _tool().main(argv) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    got = json.loads(samples_json.read_text())
    assert got["iteration"] == list(range(51))

    gbs = 8  # micro batch 2 x data parallel 4
    reference = OptimizerParamScheduler(
        _Groups(), init_lr=1e-5, max_lr=1e-3, min_lr=1e-4, lr_warmup_steps=5 * gbs, lr_decay_steps=40 * gbs,
        lr_decay_style="cosine", start_wd=0.0, end_wd=0.1, wd_incr_steps=50 * gbs, wd_incr_style="linear",
        use_checkpoint_opt_param_scheduler=False)
    for i in range(51):
        reference.num_steps = i * gbs
        assert got["samples"][i] == i * gbs
        assert got["lr"][i] == pytest.approx(reference.get_lr(), rel=1e-12, abs=0)
        assert got["wd"][i] == pytest.approx(reference.get_wd(), rel=1e-12, abs=1e-15)
    assert got["lr"][0] == pytest.approx(1e-5)            # warmup starts at --lr-warmup-init
    assert got["lr"][5] == pytest.approx(1e-3)            # peak after 5 warmup iterations
    assert got["lr"][40] == got["lr"][50] == pytest.approx(1e-4)  # decay ends at --lr-decay-iters
    assert got["wd"][25] == pytest.approx(0.05)


def test_sample_mode_and_warmup_fraction(tmp_path):
    samples_json = tmp_path / "s.json"
    argv = ["--micro-batch-size", "4", "--train-samples", "400", "--lr", "2e-3", "--lr-warmup-fraction", "0.1",
            "--lr-decay-style", "linear", "--out", str(tmp_path / "s.png"), "--json", str(samples_json)]
    assert _tool().main(argv) == 0
    got = json.loads(samples_json.read_text())
    assert len(got["lr"]) == 101                      # 400 samples / global batch 4
    assert got["lr"][10] == pytest.approx(2e-3)       # warmup = 0.1 x 400 samples = 10 iterations
    assert got["lr"][-1] == pytest.approx(0.0)
    assert all(math.isclose(w, 0.01) for w in got["wd"])


def test_bad_command_line_is_one_error_line(tmp_path, capsys):
    from arguments import run_cli

    code = run_cli(_tool().main, ["--lr", "1e-3", "--train-iters", "10", "--lr-decay-style", "WSD", "--out", str(tmp_path / "x.png")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --lr-decay-style=WSD needs --lr-wsd-decay-iters; expected the length of the anneal"]
