"""tools/ns_gram_accuracy.py measures what it says: its oracle is the library's polynomial, its bf16
emulation rounds, its inputs have the stated singular values, and its table and JSON hold every path.
(The Gram path's own correctness and accuracy are tests/unit/test_newton_schulz_gram.py's.)"""

from __future__ import annotations

import json

import pytest
import torch

import tools.ns_gram_accuracy as tool
from megatron_opt.emerging.newton_schulz import _iterate
from megatron_opt.emerging.newton_schulz_gram import gram_iterate
from megatron_opt.ns_coefficients import coefficients_for_steps
from tools.ns_gram_accuracy import make_input, measure, plain_ns, to_bf16


@pytest.mark.parametrize("coefficient_type", ["simple", "polar_express"])
@pytest.mark.parametrize("kind", ["random", "illcond"])
def test_oracle_is_the_librarys_polynomial_in_float64(coefficient_type, kind):
    """In float64 the oracle equals the library's standard loop (blocks split) and Gram path to 1e-11."""
    x = make_input(16, 48, kind, seed=0)
    triples = coefficients_for_steps(coefficient_type, 5)
    oracle = plain_ns(x, triples)
    torch.testing.assert_close(_iterate(x.clone(), triples, None, 4), oracle, atol=1e-11, rtol=0)
    torch.testing.assert_close(gram_iterate(x.clone(), triples, (3,), None, 4), oracle, atol=1e-11, rtol=0)


def test_make_input_has_the_stated_singular_values():
    ill = make_input(16, 48, "illcond", seed=0)
    s = torch.linalg.svdvals(ill).flip(0)
    torch.testing.assert_close(s / s[-1], torch.logspace(-6, 0, 16, dtype=torch.float64), rtol=1e-9, atol=0)
    for kind in ("random", "illcond"):
        x = make_input(16, 48, kind, seed=0)
        assert x.shape == (16, 48) and x.dtype == torch.float64
        assert x.norm().item() == pytest.approx(1.0, abs=1e-12)
        assert torch.equal(x, make_input(16, 48, kind, seed=0)) and not torch.equal(x, make_input(16, 48, kind, seed=1))
    with pytest.raises(ValueError, match="'lowrank'"):
        make_input(4, 8, "lowrank", seed=0)


def test_measure_every_path_against_the_oracle():
    """fp32 paths are fp32-close and the Gram path really ran (not bitwise the standard loop); the bf16
    emulation lands on bf16 values and is orders of magnitude further off."""
    x = make_input(16, 48, "random", seed=0)
    triples = coefficients_for_steps("simple", 5)
    errs = measure(x, triples, [(3,), ()])
    assert list(errs) == ["standard", "gram 3", "gram none", "bf16"]
    for name in ("standard", "gram 3", "gram none"):
        assert 0 < errs[name][0] < 1e-5 and 0 < errs[name][1] < 1e-5, (name, errs[name])
    assert errs["gram 3"] != errs["standard"]
    assert errs["bf16"][0] > 100 * errs["standard"][0]
    y = plain_ns(x.float() / x.float().norm(), triples, to_bf16)
    assert torch.equal(y, to_bf16(y))
    with pytest.raises(ValueError, match="too near square"):
        measure(make_input(40, 48, "random", seed=0), triples, [(3,)])


def test_main_prints_the_table_and_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tool, "QUICK_SHAPES", ((16, 48),))
    path = tmp_path / "acc.json"
    tool.main(["--quick", "--restarts", "none", "4,2", "--json", str(path)])
    out = capsys.readouterr().out
    assert "| gram 3 (default) | gram none | gram 2,4 | bf16 standard |" in out.splitlines()[0]
    assert sum(line.startswith("| simple | 16×48 |") for line in out.splitlines()) == 2
    data = json.loads(path.read_text())
    assert data["default_restarts"] == [3] and len(data["cases"]) == 4  # 2 coefficient sets x 2 inputs
    assert set(data["cases"][0]["errors"]) == {"standard", "gram 3", "gram none", "gram 2,4", "bf16"}


@pytest.mark.parametrize("bad", ["7", "0", "2,x", ""])
def test_a_bad_restart_set_is_one_line_naming_the_flag(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        tool.main(["--restarts", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--restarts" in err and repr(bad) in err and "1..4" in err
