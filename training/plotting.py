"""PNG plots (matplotlib, Agg backend, no display needed): a run's loss and lr, or a schedule."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str) -> Dict[str, List[dict]]:
    """Train and validation records of a metrics JSONL file; the last record of an iteration wins (resumed runs)."""
    train: Dict[int, dict] = {}
    valid: Dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            (valid if record.get("kind") == "valid" else train)[int(record["iteration"])] = record
    return {"train": [train[k] for k in sorted(train)], "valid": [valid[k] for k in sorted(valid)]}


def plot_training(metrics_path: str, out_path: str, title: Optional[str] = None) -> str:
    """Loss (train, and validation points) and learning rate against the iteration."""
    data = read_metrics(metrics_path)
    plt = _pyplot()
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    train = [r for r in data["train"] if r.get("loss") is not None]
    ax_loss.plot([r["iteration"] for r in train], [r["loss"] for r in train], label="train lm loss", linewidth=1)
    if data["valid"]:
        ax_loss.plot([r["iteration"] for r in data["valid"]], [r["loss"] for r in data["valid"]], "o-", label="validation lm loss")
    ax_loss.set_ylabel("lm loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot([r["iteration"] for r in data["train"]], [r["lr"] for r in data["train"]], color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, plt, out_path)


def plot_schedule(iterations: Sequence[int], lrs: Sequence[float], wds: Sequence[float], out_path: str, title: Optional[str] = None) -> str:
    """Learning rate and weight decay against the iteration."""
    plt = _pyplot()
    fig, (ax_lr, ax_wd) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax_lr.plot(iterations, lrs)
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(alpha=0.3)
    ax_wd.plot(iterations, wds, color="tab:green")
    ax_wd.set_ylabel("weight decay")
    ax_wd.set_xlabel("iteration")
    ax_wd.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, plt, out_path)


def _save(fig, plt, out_path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
