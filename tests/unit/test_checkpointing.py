"""Checkpoints in one process: bitwise resume, refusals with one-line errors, atomic saves, tools."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tiny_models import TinyLM
from megatron_opt.checkpointing import (
    CheckpointError,
    load_checkpoint,
    named_optimizer_state,
    read_full_checkpoint,
    save_checkpoint,
)
from megatron_opt.config import OptimizerConfig
from megatron_opt.factory import get_megatron_optimizer
from megatron_opt.scheduler import OptimizerParamScheduler

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {
    "adam_fp32": dict(optimizer="adam", lr=1e-2),
    "adam_bf16": dict(optimizer="adam", lr=1e-2, bf16=True),
    "sgd_momentum": dict(optimizer="sgd", lr=1e-2, sgd_momentum=0.9),
    "muon": dict(optimizer="muon", lr=1e-2),
}


def build(kind: str = "adam_fp32", hidden: int = 16, with_scheduler: bool = True):
    torch.manual_seed(0)
    model = TinyLM(hidden=hidden)
    cfg = dict(CONFIGS[kind])
    if cfg.get("bf16"):
        model = model.to(torch.bfloat16)
    optimizer = get_megatron_optimizer(OptimizerConfig(**cfg), [model])
    scheduler = None
    if with_scheduler:
        scheduler = OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=1e-2, min_lr=1e-3, lr_warmup_steps=2,
                                            lr_decay_steps=20, lr_decay_style="cosine", start_wd=0.01, end_wd=0.01,
                                            wd_incr_steps=20, wd_incr_style="constant")
    return model, optimizer, scheduler


def train(model, optimizer, scheduler, steps: int) -> None:
    """Data comes from the global torch RNG, so a resume is bitwise only if the RNG was restored too."""
    for _ in range(steps):
        x = torch.randint(0, 32, (4, 8))
        h = model.embedding(x)
        for block in model.blocks:
            h = h + block.fc2(torch.relu(block.fc1(block.norm(h))))
        loss = model.output(h).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step(1)


def assert_same(m1, o1, m2, o2) -> None:
    for (n1, p1), (n2, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    s1, s2 = named_optimizer_state(o1), named_optimizer_state(o2)
    assert s1.keys() == s2.keys()
    for name in s1:
        assert s1[name].keys() == s2[name].keys(), name
        for key in s1[name]:
            assert torch.equal(s1[name][key], s2[name][key]), f"{name}/{key}"


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, kind):
    torch.manual_seed(1)
    model, optimizer, scheduler = build(kind)
    train(model, optimizer, scheduler, 3)
    save_checkpoint(tmp_path, 3, [model], optimizer, scheduler, args={"lr": 1e-2}, consumed_train_samples=12,
                    data_state={"epoch": 0, "index": 12})
    train(model, optimizer, scheduler, 5)

    torch.manual_seed(999)  # a different RNG stream: only a restored RNG gives the same data
    model2, optimizer2, scheduler2 = build(kind)
    loaded = load_checkpoint(tmp_path, [model2], optimizer2, scheduler2)
    assert (loaded.iteration, loaded.consumed_train_samples, loaded.data_state) == (3, 12, {"epoch": 0, "index": 12})
    assert loaded.loaded_optimizer and loaded.loaded_rng and loaded.loaded_scheduler
    assert scheduler2.num_steps == 3
    train(model2, optimizer2, scheduler2, 5)
    assert_same(model, optimizer, model2, optimizer2)


def test_bf16_checkpoint_keeps_fp32_main_params(tmp_path):
    model, optimizer, scheduler = build("adam_bf16")
    train(model, optimizer, scheduler, 2)
    save_checkpoint(tmp_path, 2, [model], optimizer, scheduler)
    _, full = read_full_checkpoint(tmp_path)
    main = full["optimizer/blocks.0.fc1.weight/main_param"]
    assert main.dtype == torch.float32 and full["model/blocks.0.fc1.weight"].dtype == torch.bfloat16
    assert not torch.equal(main, main.bfloat16().float())  # real fp32 precision, not a cast of the model


def test_lazy_state_saved_before_the_first_step_round_trips(tmp_path):
    model, optimizer, _ = build("sgd_momentum", with_scheduler=False)
    save_checkpoint(tmp_path, 0, [model], optimizer)  # torch SGD has no state yet
    train(model, optimizer, None, 2)
    model2, optimizer2, _ = build("sgd_momentum", with_scheduler=False)
    load_checkpoint(tmp_path, [model2], optimizer2)
    assert not any(optimizer2.state.values())  # nothing invented
    torch.manual_seed(5)
    train(model2, optimizer2, None, 2)
    model3, optimizer3, _ = build("sgd_momentum", with_scheduler=False)
    torch.manual_seed(5)
    train(model3, optimizer3, None, 2)
    assert_same(model2, optimizer2, model3, optimizer3)


def test_finetune_and_no_load_optim_load_the_model_only(tmp_path):
    model, optimizer, scheduler = build()
    train(model, optimizer, scheduler, 2)
    save_checkpoint(tmp_path, 7, [model], optimizer, scheduler, consumed_train_samples=28)
    for kwargs, iteration in ((dict(finetune=True), 0), (dict(no_load_optim=True), 7)):
        model2, optimizer2, scheduler2 = build()
        loaded = load_checkpoint(tmp_path, [model2], optimizer2, scheduler2, **kwargs)
        assert loaded.iteration == iteration and not loaded.loaded_optimizer and not loaded.loaded_scheduler
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
        assert not any(optimizer2.state.values()) and scheduler2.num_steps == 0
    assert load_checkpoint(tmp_path, [build()[0]], finetune=True).loaded_rng is False


def test_no_save_optim_then_loading_the_optimizer_is_refused(tmp_path):
    model, optimizer, _ = build()
    train(model, optimizer, None, 1)
    path = save_checkpoint(tmp_path, 1, [model], optimizer, save_optim=False)
    model2, optimizer2, _ = build()
    with pytest.raises(CheckpointError, match=r"optimizer state missing \(saved with --no-save-optim\?\)") as exc:
        load_checkpoint(tmp_path, [model2], optimizer2)
    assert str(exc.value).startswith(f"checkpoint {path}: ") and "\n" not in str(exc.value)
    assert load_checkpoint(tmp_path, [model2], optimizer2, no_load_optim=True).iteration == 1


# ---- refusals ------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model, optimizer, scheduler = build()
    train(model, optimizer, scheduler, 1)
    path = save_checkpoint(tmp_path, 5, [model], optimizer, scheduler)
    return tmp_path, Path(path)


def refused(load_dir, match: str, kind: str = "adam_fp32", hidden: int = 16, **kwargs) -> str:
    model, optimizer, scheduler = build(kind, hidden=hidden)
    with pytest.raises(CheckpointError, match=match) as exc:
        load_checkpoint(load_dir, [model], optimizer, scheduler, **kwargs)
    message = str(exc.value)
    assert "\n" not in message and message.startswith("checkpoint /")
    return message


def test_a_missing_checkpoint_is_refused_and_an_empty_dir_means_start_fresh(tmp_path):
    assert load_checkpoint(tmp_path, [build()[0]]) is None
    message = refused(tmp_path, "no such checkpoint directory", iteration=3)
    assert str(tmp_path / "iter_0000003") in message


def test_a_partial_checkpoint_is_refused(saved):
    _, path = saved
    (path / "checkpoint_complete.json").unlink()
    assert str(path) in refused(path, r"incomplete checkpoint: no checkpoint_complete.json")


def test_a_truncated_data_file_is_refused(saved):
    _, path = saved
    data = next(path.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:100])
    refused(path.parent, rf"file {data.name} is 100 bytes, \d+ expected \(truncated")


def test_bad_json_metadata_is_refused(saved):
    _, path = saved
    meta = path / "metadata.json"
    text = meta.read_text()
    meta.write_text("x" + text[1:])  # same size: the marker check passes, the JSON does not parse
    refused(path, r"metadata metadata.json is not valid JSON")


def test_corrupt_tensor_data_of_the_right_size_is_refused(saved):
    _, path = saved
    data = next(path.glob("*.distcp"))
    raw = bytearray(data.read_bytes())
    raw[:64] = b"\0" * 64
    data.write_bytes(bytes(raw))
    refused(path, r"tensor data cannot be read")


def test_a_shape_mismatch_names_the_parameter_and_both_shapes(saved):
    _, path = saved
    refused(path, r"parameter blocks.0.fc1.weight: shape \[32, 16\] in checkpoint, \[48, 24\] in model|"
                  r"parameter embedding.weight: shape \[32, 16\] in checkpoint, \[32, 24\] in model", hidden=24)


def test_missing_and_unexpected_parameters_are_refused(saved):
    root, _ = saved
    model, optimizer, _ = build()
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"missing parameter extra.weight"):
        load_checkpoint(root, [model])
    smaller = build()[0]
    del smaller.output
    with pytest.raises(CheckpointError, match=r"parameter output.weight is in the checkpoint but not in the model"):
        load_checkpoint(root, [smaller])
    assert load_checkpoint(root, [smaller], strict=False).iteration == 5


def test_a_different_optimizer_is_refused(saved):
    root, _ = saved
    refused(root, r"optimizer AdamW in checkpoint, SGD now", kind="sgd_momentum")


def test_latest_pointing_at_a_partial_checkpoint_is_refused(saved):
    root, path = saved
    (root / "latest_checkpointed_iteration.txt").write_text("9\n")
    (root / "iter_0000009").mkdir()
    refused(root, r"iter_0000009: incomplete checkpoint")


# ---- atomic saves ------------------------------------------------------------------------------------


def test_saving_the_same_iteration_again_replaces_it_completely(tmp_path):
    model, optimizer, _ = build()
    save_checkpoint(tmp_path, 1, [model], optimizer)
    train(model, optimizer, None, 1)
    save_checkpoint(tmp_path, 1, [model], optimizer)
    assert sorted(os.listdir(tmp_path)) == ["iter_0000001", "latest_checkpointed_iteration.txt"]
    _, full = read_full_checkpoint(tmp_path)
    assert torch.equal(full["model/output.weight"], model.output.weight)


def test_a_save_that_fails_publishes_nothing(tmp_path):
    model, optimizer, _ = build()
    save_checkpoint(tmp_path, 1, [model], optimizer)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the save directory should be")
    with pytest.raises(CheckpointError, match="cannot create"):
        save_checkpoint(blocked, 2, [model], optimizer)
    bad = build()[0]
    bad.blocks[0].fc1.weight.tensor_model_parallel = True
    bad.blocks[0].fc1.weight.partition_dim = 0
    bad.blocks[0].fc1.weight.partition_stride = 2
    from megatron_opt.parallel import ProcessGroupCollection

    with pytest.raises(CheckpointError, match="partition_stride=2 is not supported"):
        save_checkpoint(tmp_path, 2, [bad], pg_collection=ProcessGroupCollection(tp_size=2))
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert load_checkpoint(tmp_path, [build()[0]]).iteration == 1


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {unit!r})
    from tiny_models import TinyLM
    from megatron_opt.checkpointing import save_checkpoint
    model = TinyLM()
    save_checkpoint({root!r}, 1, [model])
    model.ballast = torch.nn.Parameter(torch.randn(30_000_000))  # ~120 MB: the next save takes a while
    print("READY", flush=True)
    save_checkpoint({root!r}, 2, [model])
    print("SAVED 2", flush=True)
""")


def test_a_save_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    root = tmp_path / "ckpt"
    script = KILL_SCRIPT.format(unit=str(Path(__file__).parent), root=str(root))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        deadline = time.time() + 30
        while time.time() < deadline and not any(n.startswith("iter_0000002.tmp-") for n in os.listdir(root)):
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    names = os.listdir(root)
    assert any(n.startswith("iter_0000002.tmp-") for n in names) and "iter_0000002" not in names, names
    assert (root / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert load_checkpoint(root, [TinyLM()]).iteration == 1
    save_checkpoint(root, 3, [TinyLM()])  # the next save cleans the leftover up
    assert sorted(os.listdir(root)) == ["iter_0000001", "iter_0000003", "latest_checkpointed_iteration.txt"]


# ---- tools ----------------------------------------------------------------------------------------------


def run_tool(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_inspect_and_convert_tools(saved, tmp_path):
    root, path = saved
    out = run_tool("tools/inspect_checkpoint.py", str(root))
    assert out.returncode == 0, out.stderr
    assert "iteration: 5" in out.stdout and "model/blocks.0.fc1.weight  float32  [32, 16]" in out.stdout
    assert "optimizer/blocks.0.fc1.weight/exp_avg_sq  float32  [32, 16]" in out.stdout

    target = tmp_path / "full.pt"
    out = run_tool("tools/convert_checkpoint.py", str(root), str(target))
    assert out.returncode == 0, out.stderr
    converted = torch.load(target, weights_only=True)
    _, full = read_full_checkpoint(root)
    assert converted["iteration"] == 5 and converted["metadata"]["iteration"] == 5
    assert torch.equal(converted["model"]["output.weight"], full["model/output.weight"])
    assert torch.equal(converted["optimizer"]["output.weight"]["exp_avg"], full["optimizer/output.weight/exp_avg"])

    (path / "checkpoint_complete.json").unlink()
    out = run_tool("tools/inspect_checkpoint.py", str(path))
    assert out.returncode == 1 and out.stderr.strip() == f"error: checkpoint {path}: incomplete checkpoint: no checkpoint_complete.json (the save did not finish)"


def test_metadata_is_plain_json(saved):
    _, path = saved
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["iteration"] == 5 and meta["scheduler"]["num_steps"] == 1
    assert meta["optimizer"]["output.weight"]["optimizer"] == "AdamW"
    rng = json.loads((path / "rng" / "rank_00000.json").read_text())
    assert set(rng["rng"]) >= {"python", "torch_cpu", "numpy"}
