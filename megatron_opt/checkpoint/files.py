"""On-disk layout of a checkpoint directory and the atomic steps that make a save all-or-nothing.

::

    SAVE_DIR/
      latest_checkpointed_iteration.txt   "10" — written to a temp file, fsynced, os.replace'd
      iter_0000010/                       complete: renamed here only after every rank finished
        .metadata  __0_0.distcp  ...      DCP files (tensors only)
        metadata.json                     iteration, args, scheduler, grad scalers, optimizer summary
        rng/rank_00000.json ...           per-rank RNG states (JSON)
        checkpoint_complete.json          written LAST: format tag + every file with its size
      iter_0000020.tmp-1a2b3c4d/          a save in progress (or one that died); never loaded

Nothing here talks to other ranks; ``core`` decides which rank calls what.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional

FORMAT = "megatron_opt.dcp.v1"
LATEST_FILE = "latest_checkpointed_iteration.txt"
MARKER_FILE = "checkpoint_complete.json"
METADATA_FILE = "metadata.json"
RNG_DIR = "rng"
_ITER_RE = re.compile(r"^iter_(\d{7,})$")
_TMP_RE = re.compile(r"^iter_(\d{7,})\.(tmp|replaced)-[0-9a-f]+$")


class CheckpointError(Exception):
    """A checkpoint cannot be saved or loaded; the message is one line naming the path and the reason."""

    def __init__(self, path: Any, reason: str) -> None:
        self.path = str(path)
        self.reason = one_line(reason)
        super().__init__(f"checkpoint {self.path}: {self.reason}")


def one_line(text: Any) -> str:
    """Collapse any message (e.g. a multi-rank DCP exception) into one line."""
    return " ".join(str(text).split())


def iteration_dir_name(iteration: int) -> str:
    return f"iter_{int(iteration):07d}"


def rng_file_name(rank: int) -> str:
    return os.path.join(RNG_DIR, f"rank_{int(rank):05d}.json")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(path: str, text: str) -> None:
    """Write ``text`` to ``path`` and fsync it (no rename: the caller's directory is not visible yet)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_file_atomically(path: str, text: str) -> None:
    """Readers see the old content or the new one, never a mix: temp file, fsync, os.replace, fsync dir."""
    tmp = f"{path}.tmp-{os.getpid()}"
    write_file_durably(tmp, text)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def list_files_with_sizes(root: str) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = os.path.getsize(full)
    return dict(sorted(out.items()))


def write_marker(ckpt_dir: str, iteration: int) -> None:
    """The completion marker, written last: lists every other file of the checkpoint with its size."""
    files = list_files_with_sizes(ckpt_dir)
    files.pop(MARKER_FILE, None)
    marker = {"format": FORMAT, "iteration": int(iteration), "files": files}
    write_file_durably(os.path.join(ckpt_dir, MARKER_FILE), json.dumps(marker, indent=1, sort_keys=True))
    fsync_dir(ckpt_dir)


def publish(tmp_dir: str, final_dir: str, nonce: str) -> None:
    """Make ``tmp_dir`` visible as ``final_dir``; an existing complete ``final_dir`` is replaced only now.

    rename() cannot replace a non-empty directory, so an old checkpoint of the same iteration is first
    moved aside (``iter_X.replaced-<nonce>``), the new one renamed in, and the old one deleted.
    """
    parent = os.path.dirname(os.path.abspath(final_dir))
    aside = None
    if os.path.lexists(final_dir):
        aside = f"{final_dir}.replaced-{nonce}"
        os.rename(final_dir, aside)
    os.rename(tmp_dir, final_dir)
    fsync_dir(parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def write_latest(save_dir: str, iteration: int) -> None:
    write_file_atomically(os.path.join(save_dir, LATEST_FILE), f"{int(iteration)}\n")


def remove_stale_temporaries(save_dir: str, keep: Optional[str] = None) -> None:
    """Delete ``iter_*.tmp-*`` / ``iter_*.replaced-*`` left by saves that died (rank 0, before a new save)."""
    if not os.path.isdir(save_dir):
        return
    for name in os.listdir(save_dir):
        if _TMP_RE.match(name) and name != keep:
            shutil.rmtree(os.path.join(save_dir, name), ignore_errors=True)


def read_json(ckpt_dir: str, rel: str, what: str) -> Any:
    path = os.path.join(ckpt_dir, rel)
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(ckpt_dir, f"{what} {rel} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(ckpt_dir, f"{what} {rel} is not valid JSON ({exc})") from None


def verify_complete(ckpt_dir: str) -> Dict[str, Any]:
    """Refuse a missing, partial or truncated checkpoint directory; return its marker."""
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(ckpt_dir, "no such checkpoint directory")
    if not os.path.exists(os.path.join(ckpt_dir, MARKER_FILE)):
        raise CheckpointError(ckpt_dir, f"incomplete checkpoint: no {MARKER_FILE} (the save did not finish)")
    marker = read_json(ckpt_dir, MARKER_FILE, "completion marker")
    if not isinstance(marker, dict) or marker.get("format") != FORMAT or not isinstance(marker.get("files"), dict):
        raise CheckpointError(ckpt_dir, f"{MARKER_FILE} is not a {FORMAT} completion marker")
    for rel, size in marker["files"].items():
        full = os.path.join(ckpt_dir, rel)
        if not os.path.isfile(full):
            raise CheckpointError(ckpt_dir, f"file {rel} listed in {MARKER_FILE} is missing")
        actual = os.path.getsize(full)
        if actual != size:
            raise CheckpointError(ckpt_dir, f"file {rel} is {actual} bytes, {size} expected (truncated or overwritten)")
    return marker


def complete_iterations(save_dir: str) -> List[int]:
    if not os.path.isdir(save_dir):
        return []
    out = []
    for name in os.listdir(save_dir):
        m = _ITER_RE.match(name)
        if m and os.path.exists(os.path.join(save_dir, name, MARKER_FILE)):
            out.append(int(m.group(1)))
    return sorted(out)


def resolve_checkpoint_dir(path: str, iteration: Optional[int] = None) -> Optional[str]:
    """Which checkpoint ``--load PATH`` means.

    PATH is a checkpoint itself (``iter_*`` or anything holding a completion marker) → PATH.
    Otherwise PATH is a save directory: ``iteration`` if given, else the one named by
    ``latest_checkpointed_iteration.txt``, else the newest complete ``iter_*``; None when it
    holds no checkpoint at all (a fresh start, as Megatron-LM).
    """
    path = os.path.abspath(path)
    if os.path.exists(os.path.join(path, MARKER_FILE)) or _ITER_RE.match(os.path.basename(path)):
        return path
    if iteration is not None:
        return os.path.join(path, iteration_dir_name(iteration))
    latest = os.path.join(path, LATEST_FILE)
    if os.path.exists(latest):
        with open(latest, "r", encoding="utf-8") as f:
            text = f.read().strip()
        if not text.isdigit():
            raise CheckpointError(path, f"{LATEST_FILE} holds {text[:40]!r}; expected an iteration number")
        return os.path.join(path, iteration_dir_name(int(text)))
    done = complete_iterations(path)
    return os.path.join(path, iteration_dir_name(done[-1])) if done else None
