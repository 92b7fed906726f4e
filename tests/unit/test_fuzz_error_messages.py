"""tools/fuzz_error_messages.py folds the random value out of each message, keeping its shape."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("fuzz_error_messages", Path(__file__).resolve().parents[2] / "tools" / "fuzz_error_messages.py")
tool = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tool)


@pytest.mark.parametrize("message,shape", [
    ("lr=inf is not allowed; expected a finite number", "lr=<value> is not allowed; expected a finite number"),
    ("min_lr=0.5 is not allowed; expected a value <= lr (0.001)", "min_lr=<value> is not allowed; expected a value <= lr (<value>)"),
    ("config_overrides[ParamKey(name=['*'])].zz=1 is not allowed; expected a key among max_lr",
     "config_overrides[ParamKey(...)].<key>=<value> is not allowed; expected a key among max_lr"),
    ("config_overrides[ParamKey(attr=['x'])].max_lr=-1 is not allowed; expected a number >= 0",
     "config_overrides[ParamKey(...)].max_lr=<value> is not allowed; expected a number >= 0"),
    ("config_overrides key 5 is not allowed; expected a ParamKey", "config_overrides key <value> is not allowed; expected a ParamKey"),
    ("argument --lr: invalid float value: 'fast'", "argument --lr: invalid float value: <value>"),
    ("argument --micro-batch-size: 0 is not allowed; expected an integer >= 1",
     "argument --micro-batch-size: <value> is not allowed; expected an integer >= 1"),
    ("argument --muon-tp-mode: invalid choice: 'x' (choose from 'a', 'b')", "argument --muon-tp-mode: invalid choice: <value> (choose from 'a', 'b')"),
    ("unrecognized arguments: a b", "unrecognized arguments: <tokens>"),
    ("--lr is required; expected a peak learning rate such as --lr 3e-4", "--lr is required; expected a peak learning rate such as --lr 3e-4"),
])
def test_shape_of(message, shape):
    assert tool.shape_of(message) == shape


def test_summary_counts_shapes(tmp_path):
    log = tmp_path / "log"
    log.write_text("lr=inf is not allowed; expected a finite number\nlr=nan is not allowed; expected a finite number\n")
    assert tool.summarize(str(log)).splitlines() == [
        "2 refusals, 1 distinct messages (value given shown as `<value>`):", "",
        "- `lr=<value> is not allowed; expected a finite number` (2)"]
