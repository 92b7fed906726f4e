"""A bad command line gives exactly one line `error: <message>` on stderr, exit code 2, no traceback.

Every case runs through the real entry point of ``python -m arguments`` (its ``main`` under
``run_cli``) with file-descriptor capture; one case also runs as a real subprocess (only one,
because each process pays seconds for importing torch).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from arguments.__main__ import main as arguments_main
from arguments.cli import run_cli

REPO = Path(__file__).resolve().parents[2]
OK = ["--lr", "1e-3", "--train-iters", "10"]

INVALID_COMMAND_LINES = [
    (OK + ["--optimizer", "adamw2"], "error: argument --optimizer: 'adamw2' is not allowed; expected one of adam,"),
    (OK + ["--muon-momentun", "0.9"], "error: unrecognized arguments: --muon-momentun 0.9"),
    (OK + ["--muon-coefficient-type", "quintik"], "error: argument --muon-coefficient-type: invalid choice: 'quintik'"),
    (OK + ["--micro-batch-size", "0"], "error: argument --micro-batch-size: 0 is not allowed; expected an integer >= 1"),
    (OK + ["--lr", "fast"], "error: argument --lr: invalid float value: 'fast'"),
    (["--train-iters", "10"], "error: --lr is required; expected a peak learning rate such as --lr 3e-4"),
    (OK + ["--train-samples", "100"], "error: --train-iters=10 together with --train-samples=100 is not allowed; expected exactly one of them"),
    (OK + ["--world-size", "3", "--tensor-model-parallel-size", "2"],
     "error: world size 3 is not allowed with --tensor-model-parallel-size=2 and --pipeline-model-parallel-size=1; expected a multiple of tp*pp=2"),
    (OK + ["--fp16", "--bf16"], "error: --fp16 together with --bf16 is not allowed; expected at most one of --fp16, --bf16"),
    (OK + ["--min-lr", "1"], "error: --min-lr=1.0 with --lr=0.001 is not allowed; expected --min-lr <= --lr"),
    (OK + ["--optimizer", "muon", "--fp16"], "error: --optimizer=muon with --fp16 is not allowed; expected --bf16 or fp32"),
    (OK + ["--overlap-param-gather"], "error: --overlap-param-gather without --use-distributed-optimizer is not allowed"),
    (OK + ["--ckpt-format", "torch_dcp"], "error: --ckpt-format=torch_dcp is not allowed; expected one of torch_dist"),
    (OK + ["--muon-tp-mode", "sharded"], "error: argument --muon-tp-mode: invalid choice: 'sharded'"),
    (OK + ["--adam-beta2", "1.0"], "error: --adam-beta2: adam_beta2=1.0 is not allowed; expected a number in [0.0, 1.0)"),
    (OK + ["--optimizer-kwargs", "[1, 2]"], "error: argument --optimizer-kwargs: '[1, 2]' is not allowed; expected a YAML/JSON mapping"),
    (OK + ["--yaml-cfg", "/nonexistent/cfg.yaml"], "error: --yaml-cfg='/nonexistent/cfg.yaml' is not allowed; expected a readable file"),
    (OK + ["--weight-decay-incr-style", "linear"],
     "error: --weight-decay-incr-style=linear needs --start-weight-decay and --end-weight-decay; expected both"),
]


@pytest.mark.parametrize("argv, expected_start", INVALID_COMMAND_LINES)
def test_invalid_command_line_is_one_error_line_and_exit_2(capfd, argv, expected_start):
    code = run_cli(arguments_main.__wrapped__, argv)
    out, err = capfd.readouterr()
    assert code == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(expected_start), err
    assert "Traceback" not in err


def test_valid_command_line_prints_the_config_as_yaml(capfd):
    import yaml

    code = run_cli(arguments_main.__wrapped__, OK + ["--optimizer", "muon", "--muon-momentum", "0.9"])
    out, err = capfd.readouterr()
    assert (code, err) == (0, "")
    printed = yaml.safe_load(out)
    assert (printed["optimizer"], printed["lr"], printed["muon_momentum"], printed["params_dtype"]) == ("muon", 1e-3, 0.9, "fp32")


def test_deprecated_spelling_prints_one_warning_line(capfd):
    code = run_cli(arguments_main.__wrapped__, OK + ["--optimizer", "dist_muon"])
    _, err = capfd.readouterr()
    assert code == 0
    assert err == "warning: optimizer='dist_muon' is deprecated. Use --optimizer muon --use-distributed-optimizer instead.\n"


def test_real_subprocess_error_is_one_line_exit_2():
    """One real `python -m arguments` process (each pays seconds for importing torch): the interpreter adds nothing."""
    argv = OK + ["--world-size", "4", "--num-layers", "3", "--pipeline-model-parallel-size", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "arguments", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "error: --num-layers=3 with --pipeline-model-parallel-size=2 is not allowed; expected a multiple of 2\n"
