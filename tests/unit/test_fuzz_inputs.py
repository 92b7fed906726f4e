"""Property-based hostile input: every input builds a working optimizer or is refused in one line.

* OptimizerConfig: 1-4 fields set to random values of the right or a wrong type → either
  ``ConfigError`` (a one-line message) or a config from which ``get_megatron_optimizer`` builds an
  optimizer (or refuses with ``ConfigError``) that runs one step on a tiny LM.
* config_overrides: random ParamKeys → random dicts (known and unknown keys, any values) → same.
* command lines: random argv from the real parser's flags, junk values and stray tokens, through
  the real parse path (``run_cli`` + ``parse_and_validate``, as ``training/pretrain_gpt.py`` and
  ``python -m arguments`` do) in-process, and a few through a real ``python -m arguments`` process →
  exit 0, or exit 2 with exactly one ``error:`` line on stderr and no traceback.

Any other exception type fails the property (hypothesis shows the smallest input). Runs are
deterministic (``derandomize=True``); example counts are in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from arguments.__main__ import main as arguments_main
from arguments.cli import run_cli
from arguments.parser import build_parser
from fuzz_strategies import OVERRIDES, argv_strategy, config_kwargs, moderate, numeric_edge_kwargs, record
from megatron_opt.config import OptimizerConfig
from megatron_opt.errors import ConfigError
from megatron_opt.factory import get_megatron_optimizer
from tiny_models import TinyLM, lm_loss

REPO = Path(__file__).resolve().parents[2]
# Example counts (docs/reliability.md): modest, fixed, and the same on every run (derandomize=True).
CONFIG_EXAMPLES_N, EDGE_EXAMPLES_N, OVERRIDE_EXAMPLES_N, CLI_EXAMPLES_N, SUBPROCESS_EXAMPLES_N = 150, 300, 150, 250, 2
_COMMON = dict(deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
CONFIG_EXAMPLES = settings(max_examples=CONFIG_EXAMPLES_N, **_COMMON)
EDGE_EXAMPLES = settings(max_examples=EDGE_EXAMPLES_N, **_COMMON)
OVERRIDE_EXAMPLES = settings(max_examples=OVERRIDE_EXAMPLES_N, **_COMMON)
CLI_EXAMPLES = settings(max_examples=CLI_EXAMPLES_N, **_COMMON)
SUBPROCESS_EXAMPLES = settings(max_examples=SUBPROCESS_EXAMPLES_N, **_COMMON)


def assert_one_line(exc: ConfigError) -> None:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message, repr(message)
    record(message)


def build_and_step(config: OptimizerConfig, overrides=None, expect_finite: bool = False) -> None:
    """Build on a tiny LM and run one step; ``expect_finite``: an update must leave every param finite."""
    model = TinyLM()
    try:
        optimizer = get_megatron_optimizer(config, [model], config_overrides=overrides)
    except ConfigError as exc:
        assert_one_line(exc)
        return
    loss = lm_loss(model, 0)
    (optimizer.scale_loss(loss) if config.fp16 else loss).backward()
    result = optimizer.step()
    assert isinstance(result, tuple) and len(result) == 3
    if expect_finite and result[0]:
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        assert not bad, f"accepted config {config} made {bad} non-finite in one step"


@CONFIG_EXAMPLES
@given(config_kwargs())
def test_optimizer_config_fields_build_and_step_or_one_config_error(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated spellings warn; not what is tested here
        try:
            config = OptimizerConfig(**kwargs)
        except ConfigError as exc:
            assert_one_line(exc)
            return
        # custom NS coefficients are the user's polynomial: one that does not converge (e.g. (0, 0.5, 0.999))
        # legitimately blows the update up, so only the built-in coefficient sets must stay finite
        build_and_step(config, expect_finite=moderate(kwargs) and config.muon_coefficient_type != "custom")


@EDGE_EXAMPLES
@given(numeric_edge_kwargs())
def test_numeric_fields_at_edge_values_build_finite_or_one_config_error(kwargs):
    test_optimizer_config_fields_build_and_step_or_one_config_error.hypothesis.inner_test(kwargs)


@OVERRIDE_EXAMPLES
@given(OVERRIDES)
def test_config_overrides_build_and_step_or_one_config_error(overrides):
    build_and_step(OptimizerConfig(lr=1e-3), overrides, expect_finite=moderate({str(i): v for i, v in enumerate(overrides.values())}))
    build_and_step(OptimizerConfig(optimizer="muon", lr=1e-3), overrides, expect_finite=moderate({str(i): v for i, v in enumerate(overrides.values())}))


def _parse_only(argv):
    """The real parse path of python -m arguments / pretrain_gpt (parse_and_validate), output discarded."""
    return arguments_main.__wrapped__(argv)


def check_cli_result(code: int, out: str, err: str, argv) -> None:
    lines = err.splitlines()
    if code == 0:
        assert all(line.startswith("warning: ") for line in lines), (argv, err)
        return
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and err.endswith("\n"), (argv, err)
    assert "Traceback" not in err
    record(lines[0][len("error: "):])


@CLI_EXAMPLES
@given(argv_strategy(build_parser()))
def test_random_command_lines_parse_or_exit_2_with_one_line(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(_parse_only, argv)
    check_cli_result(code, out.getvalue(), err.getvalue(), argv)


@SUBPROCESS_EXAMPLES
@given(argv_strategy(build_parser()))
def test_random_command_lines_in_a_real_process(argv):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "arguments", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    check_cli_result(proc.returncode, proc.stdout, proc.stderr, argv)
