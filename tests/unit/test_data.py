"""Corpus loading, the train/valid split, samples, the DP batch order and the MMIDIDX reader."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from megatron_opt.errors import ConfigError
from training.data import (
    BatchIterator,
    BatchLayout,
    DataConfig,
    IndexedDataset,
    SampleDataset,
    build_datasets,
    load_token_stream,
    microbatches_at,
    split_train_valid,
    stdlib_source_files,
)

NUMPY_TO_CODE = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7, np.uint16: 8}


def write_indexed_dataset(prefix: str, sequences, dtype) -> None:
    """An independent writer of the documented MMIDIDX layout (one document per sequence)."""
    pointers, offset = [], 0
    with open(prefix + ".bin", "wb") as f:
        for seq in sequences:
            data = np.asarray(seq, dtype=dtype).tobytes()
            pointers.append(offset)
            offset += len(data)
            f.write(data)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", NUMPY_TO_CODE[dtype]))
        f.write(struct.pack("<Q", len(sequences)))
        f.write(struct.pack("<Q", len(sequences) + 1))
        f.write(np.array([len(s) for s in sequences], dtype=np.int32).tobytes())
        f.write(np.array(pointers, dtype=np.int64).tobytes())
        f.write(np.arange(len(sequences) + 1, dtype=np.int64).tobytes())


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint8])
def test_indexed_dataset_round_trip(tmp_path, dtype):
    sequences = [[1, 2, 3], [40, 50], [7, 8, 9, 10, 11]]
    prefix = str(tmp_path / "corpus")
    write_indexed_dataset(prefix, sequences, dtype)
    ds = IndexedDataset(prefix)
    assert len(ds) == 3 and ds.dtype == np.dtype(dtype)
    assert [ds[i].tolist() for i in range(3)] == sequences
    assert ds.document_indices.tolist() == [0, 1, 2, 3]
    assert load_token_stream(prefix).tolist() == [t for s in sequences for t in s]


def test_indexed_dataset_rejects_a_bad_header(tmp_path):
    prefix = str(tmp_path / "bad")
    (tmp_path / "bad.idx").write_bytes(b"NOTANIDX" + bytes(40))
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="MMIDIDX"):
        IndexedDataset(prefix)


def test_default_corpus_is_stdlib_source_and_deterministic():
    files = stdlib_source_files()
    assert len(files) == 32 and files == sorted(files) and all(f.suffix == ".py" for f in files)
    tokens = load_token_stream()
    assert len(tokens) > 100_000 and tokens.max() < 256
    assert np.array_equal(tokens[:len(files[0].read_bytes())], np.frombuffer(files[0].read_bytes(), np.uint8))
    train, valid = split_train_valid(tokens, 0.05)
    assert len(valid) == round(len(tokens) * 0.05) and np.array_equal(np.concatenate([train, valid]), tokens)


def test_text_and_jsonl_paths(tmp_path):
    (tmp_path / "a.txt").write_text("héllo")
    assert bytes(load_token_stream(str(tmp_path / "a.txt")).astype(np.uint8)) == "héllo".encode()
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "ab"}) + "\n\n" + json.dumps({"text": "cd"}) + "\n")
    assert bytes(load_token_stream(str(tmp_path / "b.jsonl")).astype(np.uint8)) == b"ab\ncd"
    with pytest.raises(ConfigError, match="--data-path"):
        load_token_stream(str(tmp_path / "missing"))


def test_samples_are_shifted_windows_and_each_epoch_a_permutation():
    ds = SampleDataset(np.arange(41), seq_length=4, seed=3)
    assert len(ds) == 10
    tokens, labels = ds[0]
    assert torch.equal(labels[:-1], tokens[1:]) and int(labels[-1]) == int(tokens[-1]) + 1
    starts = lambda epoch: sorted(int(ds[epoch * 10 + i][0][0]) for i in range(10))
    assert starts(0) == starts(1) == list(range(0, 40, 4))
    assert [int(ds[i][0][0]) for i in range(10)] != [int(ds[10 + i][0][0]) for i in range(10)]
    again = SampleDataset(np.arange(41), seq_length=4, seed=3)
    assert all(torch.equal(ds[i][0], again[i][0]) for i in range(25))


def test_dp_ranks_split_the_global_batch_like_one_rank():
    one = BatchLayout(micro_batch_size=2, num_microbatches=4)
    parts = [BatchLayout(micro_batch_size=2, num_microbatches=2, dp_size=2, dp_rank=r) for r in range(2)]
    assert one.global_batch_size == parts[0].global_batch_size == 8
    single = one.sample_indices(16)
    assert [i for mb in single for i in mb] == list(range(16, 24))
    per_rank = [p.sample_indices(16) for p in parts]
    assert per_rank[0] == [[16, 17], [20, 21]] and per_rank[1] == [[18, 19], [22, 23]]


def test_batch_iterator_resumes_from_consumed_samples():
    train, valid = build_datasets(DataConfig(seq_length=16))
    assert valid is not None and len(valid) > 0
    layout = BatchLayout(micro_batch_size=2, num_microbatches=2, dp_size=2, dp_rank=1)
    it = BatchIterator(train, layout)
    first_three = [next(it) for _ in range(3)]
    resumed = BatchIterator(train, layout, consumed_samples=2 * layout.global_batch_size)
    third = next(resumed)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first_three[2], third))
    assert it.consumed_samples == 24
    tokens, labels = microbatches_at(train, layout, 0)[0]
    assert tokens.shape == labels.shape == (2, 16) and tokens.dtype == torch.int64


def test_vocab_too_small_is_a_config_error():
    with pytest.raises(ConfigError, match="--vocab-size"):
        build_datasets(DataConfig(seq_length=16), vocab_size=100)
