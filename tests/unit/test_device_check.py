"""tools/device_check.py --smoke on CPU: every section reports, the CPU-capable checks pass, the CUDA-only ones
are skipped with their reason; and the pieces that only matter on a GPU (sync locating, verdicts) can fail.

No timing is asserted. The GPU run itself is docs/device_check.md's command on the device machine."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch

from megatron_opt.emerging.newton_schulz import orthogonalize
from tools import device_check
from tools.device_check_skip_step import CASES, SYNC_MESSAGE, SyncRecorder, _verdict, _where

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the CPU --smoke layout (on CUDA the sync checks run)")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    path = tmp_path_factory.mktemp("device_check") / "dc.json"
    with torch.random.fork_rng():
        returned = device_check.main(["--smoke", "--json", str(path)])
    result = json.loads(path.read_text())
    assert result == json.loads(json.dumps(returned, default=str))  # the file is what main() returned
    return result


def test_every_section_reports_and_nothing_failed(smoke):
    assert smoke["mode"] == "smoke" and not smoke["cuda_checks_run"]
    assert list(smoke["sections"]) == list(device_check.SECTIONS)
    for name, s in smoke["sections"].items():
        assert s["status"] in ("pass", "skipped"), (name, s.get("error"), s["status"])
        assert s["seconds"] >= 0
    assert smoke["all_passed"] is True and smoke["complete"] is True
    assert smoke["sections_requested"] == list(device_check.SECTIONS)


def test_skip_step_section_runs_the_device_path_on_cpu_and_skips_the_sync_check(smoke):
    s = smoke["sections"]["skip_step_sync"]
    assert s["status"] == "skipped" and s["reason"].startswith("no CUDA")
    assert [c["name"] for c in s["checks"]] == list(CASES)
    for c in s["checks"]:
        assert c["pass"], (c["name"], c.get("error"), c.get("checks"))
        assert "sync_free" not in c and "sync_free" not in c["checks"]  # no CUDA: the stand-in guard instead
        assert not c["device_path_by_default"]  # CPU params: the device path was forced
        assert c["found_inf_everywhere"] != c["expect_sync"]
        assert [o["kind"] for o in c["outcomes"]] == ["normal", "spike", "normal"]
        assert [o["updated"] for o in c["outcomes"]] == [True, False, True]
        assert c["num_skipped"] == 1 and c["warmup"]["steps"] == 12
    by_name = {c["name"]: c for c in s["checks"]}
    for name in ("adam", "adam_bf16", "muon", "soap"):
        assert by_name[name]["backends"] == {"adam": "torch_fused"} and by_name[name]["host_read_free"] is True
    soap = by_name["soap"]
    assert soap["syncs_soap_refresh_step"]["accepted_step"] % soap["config"]["soap_precondition_frequency"] == 0
    control = by_name["control_adam_foreach"]  # the guard catches the one documented read of the decision
    assert control["host_read_free"] is False and control["backends"] == {"adam": "torch_foreach"}
    assert control["sync"]["step"] == "normal"
    assert control["sync"]["library"].startswith("megatron_opt/device_skip_step.py:")
    assert control["sync"]["library"].endswith("in _step_with_device_decision")


def test_te_section_is_skipped_but_its_comparison_runs_bitwise_with_torch_fused(smoke):
    s = smoke["sections"]["te_fused_adam"]
    assert s["status"] == "skipped" and "no CUDA" in s["reason"]
    (res,) = s["exercised_instead"]
    assert res["backend_requested"] == "torch_fused" and res["backends_logged"] == {"adam": "torch_fused"}
    assert res["max_abs_param_diff"] == 0.0 and res["pass"]
    assert math.isfinite(res["inner_over_torch"]) and res["inner_over_torch"] > 0


def test_ns_sections_run_at_tiny_shapes_in_fp32(smoke):
    speed = smoke["sections"]["ns_throughput"]
    assert speed["status"] == "pass" and speed["dtype"] == "torch.float32"
    rows = {tuple(r["shape"]): r for r in speed["checks"]}
    assert set(rows) == {(96, 96), (64, 192)}
    assert "gram" not in rows[(96, 96)]["paths"] and {"gram", "gram_syrk"} <= set(rows[(64, 192)]["paths"])
    for r in rows.values():
        for p in r["paths"].values():
            assert p["finite"] and math.isfinite(p["tflops"]) and p["tflops"] > 0
            assert p["max_abs_diff_vs_plain"] < 1e-4  # every path computes the same polynomial
    assert "standard/plain" in rows[(64, 192)]["time_ratios"] and "gram/standard" in rows[(64, 192)]["time_ratios"]
    acc = smoke["sections"]["ns_accuracy"]
    assert acc["status"] == "pass"
    assert sorted((r["dtype"], r["input"]) for r in acc["checks"]) == sorted(
        (d, k) for d in ("torch.bfloat16", "torch.float32") for k in ("random", "illcond"))
    for r in acc["checks"]:
        worst = 0.1 if r["dtype"] == "torch.bfloat16" else 1e-4
        assert all(0 < e["max_abs"] < worst for e in r["errors"].values()), r


def test_a_spike_not_skipped_or_a_read_in_the_guarded_part_fails_the_case(smoke):
    res = copy.deepcopy(smoke["sections"]["skip_step_sync"]["checks"][0])
    assert _verdict(res, cuda=False)["pass"]
    res["outcomes"][1]["params_unchanged"] = False
    verdict = _verdict(res, cuda=False)
    assert not verdict["pass"] and not verdict["checks"]["spike_skipped_params_and_state_unchanged"]
    verdict = _verdict(dict(smoke["sections"]["skip_step_sync"]["checks"][0], host_read_free=False), cuda=False)
    assert [k for k, v in verdict["checks"].items() if not v] == ["host_read_free"]
    on_cuda = dict(smoke["sections"]["skip_step_sync"]["checks"][0], device_path_by_default=True)
    assert _verdict(dict(on_cuda, sync_free=True), cuda=True)["pass"]
    verdict = _verdict(dict(on_cuda, sync_free=False), cuda=True)  # a sync inside the device part
    assert not verdict["pass"] and [k for k, v in verdict["checks"].items() if not v] == ["sync_free"]


def test_sync_warnings_are_recorded_with_their_library_line_and_others_pass_through():
    def library_call():
        try:
            orthogonalize(torch.zeros(3), ())  # raises inside megatron_opt: a real library frame on the stack
        except TypeError as e:
            return _where(__import__("traceback").extract_tb(e.__traceback__))

    where = library_call()
    assert where["library"].startswith("megatron_opt/emerging/newton_schulz.py:") and where["library"].endswith("orthogonalize")
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with SyncRecorder(enabled=False) as rec:
            warnings.warn(f"called a {SYNC_MESSAGE}")
            warnings.warn("something else")
    assert rec.summary()["syncs"] == 1 and rec.sites[0]["at"].startswith("tests/unit/test_device_check.py:")
    assert [str(w.message) for w in outer] == ["something else"]


def test_bad_sections_flag_is_one_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        device_check.main(["--sections", "ns_speed"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--sections" in err and "'ns_speed'" in err and "skip_step_sync" in err
