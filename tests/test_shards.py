"""Shard format: writer, reader (`open_dataset`), manifest, checksums, bad shards."""

import json

import numpy as np
import pytest

from bertjax.data import open_dataset
from bertjax.data.instances import pack_instances
from bertjax.data.shards import write_dataset
from bertjax.data.tokenizer import load_tokenizer
from bertjax.errors import UserError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_vocab(path, n_words=50):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(SPECIALS + [f"w{i}" for i in range(n_words)]) + "\n")
    return load_tokenizer(path)


def random_instances(n, max_seq_len, seed=0, vocab=(5, 55)):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        la = int(rng.integers(1, max_seq_len - 4))
        lb = int(rng.integers(0, max_seq_len - 3 - la + 1))  # 0: single segment
        a = rng.integers(*vocab, la).tolist()
        b = rng.integers(*vocab, lb).tolist()
        out.append((a, b, bool(rng.integers(2)) and lb > 0))
    return out


@pytest.fixture
def tok(tmp_path):
    return make_vocab(tmp_path / "vocab" / "vocab.txt")


def test_roundtrip_across_shards(tmp_path, tok):
    L = 16
    rows = random_instances(23, L)
    ds = open_dataset(
        write_dataset(tmp_path / "ds", rows, tok, L, shard_size=5, seed=3), verify_checksums=True
    )
    assert len(ds) == 23 and len(ds.manifest["shards"]) == 5
    assert ds.max_seq_len == L and ds.vocab_size == tok.vocab_size
    assert ds.special_ids == tok.special_ids and ds.manifest["seed"] == 3
    assert ds.load_tokenizer().identity == tok.identity
    for i, (a, b, rnd) in enumerate(rows):
        x = ds[i]
        want = [2, *a, 3, *b, 3] if b else [2, *a, 3]
        n = len(want)
        assert x["input_ids"].tolist() == want + [0] * (L - n)
        assert x["input_mask"].tolist() == [1] * n + [0] * (L - n)
        seg_b = len(b) + 1 if b else 0
        assert x["segment_ids"].tolist() == [0] * (n - seg_b) + [1] * seg_b + [0] * (L - n)
        assert int(x["next_sentence_labels"]) == int(rnd)
    # get_batch over indices spanning shards, unordered and repeated, equals per-item access.
    idx = np.array([22, 0, 7, 7, 13, 4, 19])
    batch = ds.get_batch(idx)
    for k, v in batch.items():
        assert v.dtype == np.int32
        np.testing.assert_array_equal(v, np.stack([ds[i][k] for i in idx]))
    assert ds[-1]["input_ids"].tolist() == ds[22]["input_ids"].tolist()
    with pytest.raises(IndexError):
        ds[23]


def test_files_are_plain_npy_with_smallest_dtypes(tmp_path, tok):
    out = write_dataset(tmp_path / "ds", random_instances(4, 12), tok, 12)
    ids = np.load(out / "shard-00000.input_ids.npy", mmap_mode="r")
    assert ids.dtype == np.uint16 and ids.shape == (4, 12)
    assert np.load(out / "shard-00000.length.npy").dtype == np.int16
    assert np.load(out / "shard-00000.b_start.npy").dtype == np.int16
    assert np.load(out / "shard-00000.next_sentence_label.npy").dtype == np.uint8
    assert not list(out.glob(".*")), "temporary files left behind"
    big = make_vocab(tmp_path / "big" / "vocab.txt", n_words=70_000)
    out = write_dataset(tmp_path / "ds_big", [([69_000, 5], [6], False)], big, 8)
    assert np.load(out / "shard-00000.input_ids.npy").dtype == np.int32
    assert open_dataset(out)[0]["input_ids"][1] == 69_000


def test_pack_single_segment_and_too_long():
    a = pack_instances([([7, 8], [], False)], 6, cls_id=2, sep_id=3, pad_id=0)
    assert a["input_ids"].tolist() == [[2, 7, 8, 3, 0, 0]]
    assert a["length"].tolist() == [4] and a["b_start"].tolist() == [4]
    with pytest.raises(ValueError, match="max_seq_len"):
        pack_instances([([7] * 4, [8], False)], 6, cls_id=2, sep_id=3, pad_id=0)


def test_no_manifest_is_not_a_dataset(tmp_path, tok):
    out = write_dataset(tmp_path / "ds", random_instances(3, 12), tok, 12)
    (out / "manifest.json").unlink()
    with pytest.raises(UserError, match="not a complete dataset"):
        open_dataset(out)


def test_corrupted_shard_named_with_checksum(tmp_path, tok):
    out = write_dataset(tmp_path / "ds", random_instances(9, 12), tok, 12, shard_size=4)
    f = out / "shard-00001.input_ids.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # same size, one flipped byte
    f.write_bytes(bytes(data))
    open_dataset(out, verify_checksums=False)  # shapes still fine: only the checksum tells
    expected = json.loads((out / "manifest.json").read_text())["shards"][1]["sha256"]["input_ids"]
    with pytest.raises(UserError) as e:
        open_dataset(out)
    assert "shard-00001.input_ids.npy" in str(e.value) and expected in str(e.value)


def test_truncated_and_missing_shards(tmp_path, tok):
    out = write_dataset(tmp_path / "ds", random_instances(9, 12), tok, 12, shard_size=4)
    f = out / "shard-00002.length.npy"
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(UserError, match="shard-00002.length.npy.*truncated"):
        open_dataset(out)
    (out / "shard-00000.b_start.npy").unlink()
    with pytest.raises(UserError, match="shard-00000.b_start.npy is missing"):
        open_dataset(out)


def test_output_dir_rules(tmp_path, tok):
    """A complete dataset is replaced only with overwrite; what an older interrupted write left
    (shards, no manifest) is replaced without; other files are refused even with overwrite."""
    rows = random_instances(3, 12)
    out = write_dataset(tmp_path / "ds", rows, tok, 12)
    with pytest.raises(UserError, match="already holds a bertjax dataset .*pass --overwrite"):
        write_dataset(out, rows, tok, 12)
    write_dataset(out, rows[:1], tok, 12, overwrite=True)
    assert len(open_dataset(out)) == 1
    (out / "manifest.json").unlink()
    (out / ".shard-00007.input_ids.npy.tmp").write_bytes(b"x")
    write_dataset(out, rows, tok, 12)
    assert not (out / ".shard-00007.input_ids.npy.tmp").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="files bertjax did not write .*choose another folder"):
        write_dataset(tmp_path / "other", rows, tok, 12, overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
