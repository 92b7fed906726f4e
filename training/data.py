"""Training data: token streams, fixed-length samples and the per-DP-rank batch order.

The default corpus needs no download and is real text: a fixed subset of the Python standard
library's own source files, byte-level (vocabulary 256). ``--data-path`` may instead name a text
file, a JSONL file (field ``"text"``) or a Megatron indexed dataset prefix (``<prefix>.bin/.idx``).
Everything is deterministic: the same arguments give the same batches on every run and rank.
"""

from __future__ import annotations

import json
import os
import struct
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from megatron_opt.errors import ConfigError, config_error

DEFAULT_STDLIB_FILES = 32
"""How many of the sorted top-level ``*.py`` files of the standard library form the default corpus."""

# --------------------------------------------------------------------------------------------
# Megatron indexed dataset (MMIDIDX)

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}


class IndexedDataset:
    """Read-only view of ``<prefix>.idx`` / ``<prefix>.bin``; ``dataset[i]`` is sequence i's tokens."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        with open(prefix + ".idx", "rb") as f:
            header = f.read(len(INDEX_HEADER))
            if header != INDEX_HEADER:
                raise ConfigError(f"--data-path={prefix!r} is not allowed; {prefix}.idx does not start with the MMIDIDX header")
            (version,) = struct.unpack("<Q", f.read(8))
            if version != INDEX_VERSION:
                raise ConfigError(f"--data-path={prefix!r}: index version {version} is not supported; expected {INDEX_VERSION}")
            (code,) = struct.unpack("<B", f.read(1))
            if code not in DTYPE_CODES:
                raise ConfigError(f"--data-path={prefix!r}: token dtype code {code} is not allowed; expected one of {sorted(DTYPE_CODES)}")
            self.dtype = np.dtype(DTYPE_CODES[code])
            (count,) = struct.unpack("<Q", f.read(8))
            (doc_count,) = struct.unpack("<Q", f.read(8))
            offset = f.tell()
        index = np.memmap(prefix + ".idx", mode="r", dtype=np.uint8)
        self.sizes = np.frombuffer(index, dtype=np.int32, count=count, offset=offset)
        offset += self.sizes.nbytes
        self.pointers = np.frombuffer(index, dtype=np.int64, count=count, offset=offset)
        offset += self.pointers.nbytes
        self.document_indices = np.frombuffer(index, dtype=np.int64, count=doc_count, offset=offset)
        self._bin = np.memmap(prefix + ".bin", mode="r", dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.frombuffer(self._bin, dtype=self.dtype, count=int(self.sizes[i]), offset=int(self.pointers[i]))

    def all_tokens(self) -> np.ndarray:
        return np.concatenate([self[i].astype(np.int64) for i in range(len(self))]) if len(self) else np.zeros(0, np.int64)


def is_indexed_dataset(prefix: str) -> bool:
    return os.path.exists(prefix + ".idx") and os.path.exists(prefix + ".bin")


# --------------------------------------------------------------------------------------------
# token streams


def stdlib_source_files(limit: int = DEFAULT_STDLIB_FILES) -> List[Path]:
    """The first ``limit`` top-level ``*.py`` files of the standard library, sorted by name."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(stdlib.glob("*.py"))[:limit]


def bytes_to_tokens(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64)


def text_documents(path: str) -> List[str]:
    """A ``.jsonl`` file gives one document per line (field ``"text"``); any other file is one document."""
    if path.endswith(".jsonl") or path.endswith(".json"):
        docs = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    record = json.loads(line)
                    if "text" not in record:
                        raise ConfigError(f"--data-path={path!r}: line {line_no} has no 'text' field; expected JSON objects with 'text'")
                    docs.append(record["text"])
        return docs
    return [Path(path).read_text(encoding="utf-8", errors="replace")]


def load_token_stream(data_path: Optional[str] = None, stdlib_files: int = DEFAULT_STDLIB_FILES) -> np.ndarray:
    """All tokens of the corpus as one int64 stream (documents joined by a newline byte for text)."""
    if data_path is None:
        docs = [p.read_bytes() for p in stdlib_source_files(stdlib_files)]
        return bytes_to_tokens(b"\n".join(docs))
    if is_indexed_dataset(data_path):
        return IndexedDataset(data_path).all_tokens()
    if os.path.isfile(data_path):
        return bytes_to_tokens("\n".join(text_documents(data_path)).encode("utf-8"))
    raise config_error("--data-path", data_path, "a text/JSONL file or an indexed dataset prefix with .bin and .idx files")


def split_train_valid(tokens: np.ndarray, valid_fraction: float) -> Tuple[np.ndarray, np.ndarray]:
    """Deterministic split: the last ``valid_fraction`` of the stream is validation."""
    if not 0.0 <= valid_fraction < 1.0:
        raise config_error("valid_fraction", valid_fraction, "a number in [0, 1)")
    cut = len(tokens) - int(round(len(tokens) * valid_fraction))
    return tokens[:cut], tokens[cut:]


# --------------------------------------------------------------------------------------------
# samples and batches


class SampleDataset:
    """Non-overlapping windows of ``seq_length + 1`` tokens → (tokens, labels shifted by one).

    Indexed by a global sample number that runs on across epochs; each epoch visits every window
    once in an order shuffled by ``(seed, epoch)``.
    """

    def __init__(self, tokens: np.ndarray, seq_length: int, seed: int = 1234, shuffle: bool = True):
        self.tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        self.seq_length = seq_length
        self.seed = seed
        self.shuffle = shuffle
        self.windows = (len(self.tokens) - 1) // seq_length
        if self.windows < 1:
            raise ConfigError(f"seq_length={seq_length} is not allowed for a corpus of {len(self.tokens)} tokens; expected at most {len(self.tokens) - 1}")
        self._order_epoch = -1
        self._order = None

    def __len__(self) -> int:
        """Samples per epoch."""
        return self.windows

    def _window(self, sample: int) -> int:
        epoch, within = divmod(sample, self.windows)
        if not self.shuffle:
            return within
        if epoch != self._order_epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order, self._order_epoch = torch.randperm(self.windows, generator=g), epoch
        return int(self._order[within])

    def __getitem__(self, sample: int) -> Tuple[torch.Tensor, torch.Tensor]:
        start = self._window(sample) * self.seq_length
        chunk = self.tokens[start: start + self.seq_length + 1]
        return chunk[:-1], chunk[1:]

    @property
    def max_token(self) -> int:
        return int(self.tokens.max())


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch is cut: ``global = micro_batch_size × num_microbatches × dp_size``."""

    micro_batch_size: int
    num_microbatches: int
    dp_size: int = 1
    dp_rank: int = 0

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.num_microbatches * self.dp_size

    def sample_indices(self, consumed_samples: int) -> List[List[int]]:
        """This rank's micro-batches (lists of global sample numbers) of the global batch starting at ``consumed_samples``.

        As Megatron's pretraining sampler: each run of ``micro_batch_size × dp_size`` consecutive
        samples is one micro-batch step, and DP rank r takes the r-th ``micro_batch_size`` of it.
        """
        step = self.micro_batch_size * self.dp_size
        out = []
        for m in range(self.num_microbatches):
            first = consumed_samples + m * step + self.dp_rank * self.micro_batch_size
            out.append(list(range(first, first + self.micro_batch_size)))
        return out


def microbatches_at(dataset: SampleDataset, layout: BatchLayout, consumed_samples: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """This rank's (tokens, labels) micro-batches of the global batch starting at ``consumed_samples``."""
    batches = []
    for indices in layout.sample_indices(consumed_samples):
        pairs = [dataset[i] for i in indices]
        batches.append((torch.stack([t for t, _ in pairs]), torch.stack([l for _, l in pairs])))
    return batches


class BatchIterator:
    """Yields this rank's micro-batches for successive global batches; resumable from ``consumed_samples``."""

    def __init__(self, dataset: SampleDataset, layout: BatchLayout, consumed_samples: int = 0):
        self.dataset = dataset
        self.layout = layout
        self.consumed_samples = consumed_samples

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        batch = microbatches_at(self.dataset, self.layout, self.consumed_samples)
        self.consumed_samples += self.layout.global_batch_size
        return batch


@dataclass
class DataConfig:
    seq_length: int
    data_path: Optional[str] = None
    """None = the embedded standard-library corpus."""
    valid_fraction: float = 0.05
    seed: int = 1234
    stdlib_files: int = DEFAULT_STDLIB_FILES


def build_datasets(config: DataConfig, vocab_size: Optional[int] = None) -> Tuple[SampleDataset, Optional[SampleDataset]]:
    """(train, validation) sample datasets; validation (None if too short) is read in order, train shuffled per epoch."""
    tokens = load_token_stream(config.data_path, config.stdlib_files)
    if vocab_size is not None and len(tokens) and int(tokens.max()) >= vocab_size:
        raise config_error("--vocab-size", vocab_size, f"more than the largest token id {int(tokens.max())} in the data")
    train, valid = split_train_valid(tokens, config.valid_fraction)
    valid_ds = SampleDataset(valid, config.seq_length, config.seed, shuffle=False) if len(valid) > config.seq_length else None
    return SampleDataset(train, config.seq_length, config.seed), valid_ds
