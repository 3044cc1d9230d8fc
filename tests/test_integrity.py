"""Data integrity: checksums verified on open (once per file per process), token ids checked
against the vocabulary, and tokenizer identities compared."""

import json
import os
import re

import numpy as np
import pytest
from test_shards import make_vocab, random_instances

from bertjax.cli import main
from bertjax.data import integrity, open_dataset
from bertjax.data.integrity import check_same_tokenizer, file_sha256
from bertjax.data.loader import Loader
from bertjax.data.shards import write_dataset
from bertjax.errors import UserError

L = 12


@pytest.fixture
def dataset(tmp_path):
    """9 instances in 3 shards of 4, 4, 1 rows, vocabulary of 55 ids."""
    tok = make_vocab(tmp_path / "vocab" / "vocab.txt")
    return write_dataset(tmp_path / "ds", random_instances(9, L), tok, L, shard_size=4)


def replace_file(path, data: bytes) -> None:
    """Writes `data` as a new file over `path`, as copy tools do (a new inode)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def flip_high_byte(path, row: int, col: int) -> None:
    """Flips the high byte of input_ids[row, col] (uint16): an id of 65,280 or more."""
    data = bytearray(path.read_bytes())
    header = len(data) - np.load(path).nbytes
    data[header + 2 * (row * L + col) + 1] ^= 0xFF
    replace_file(path, bytes(data))


def test_flipped_byte_is_caught_on_open_by_default(dataset):
    """A flipped byte in a shard is one UserError naming the file and both checksums when
    the dataset is opened with the defaults, before any batch. Failed before: open_dataset
    did not verify unless asked (`verify=True`), so train, eval and batches read it."""
    f = dataset / "shard-00001.input_ids.npy"
    expected = json.loads((dataset / "manifest.json").read_text())["shards"][1]["sha256"]
    flip_high_byte(f, row=2, col=1)
    with pytest.raises(UserError) as e:
        open_dataset(dataset)
    assert f"shard file {f} is corrupted" in str(e.value)
    assert expected["input_ids"] in str(e.value) and file_sha256(f) in str(e.value)


def test_flipped_byte_without_checksums_fails_at_its_batch(dataset):
    """With `verify_checksums=False` the dataset opens, batches of sound rows are read, and
    the batch holding the out-of-vocabulary id is one UserError naming the shard file, row
    and id, also through a Loader's background threads. Failed before: the id went into
    the batch (and on to the model) without a word."""
    f = dataset / "shard-00001.input_ids.npy"
    flip_high_byte(f, row=2, col=1)
    ds = open_dataset(dataset, verify_checksums=False)
    ds.get_batch(np.array([0, 1, 5, 8]))  # rows 0, 1 of shard 0; 1 of shard 1; 0 of shard 2
    message = re.escape(str(f)) + r" holds token id 65\d{3} \(row 2\), outside the vocabulary of 55"
    with pytest.raises(UserError, match=message):
        ds.get_batch(np.array([0, 6]))  # instance 6 = row 2 of shard 1
    with Loader(ds, 9, threads=2) as loader, pytest.raises(UserError, match="holds token id"):
        next(loader)  # one batch of all 9 instances


def test_out_of_vocabulary_id_with_matching_checksum(dataset):
    """A shard whose checksum matches but which holds an id >= the manifest's vocab_size
    (written by another tool or tokenizer) is one UserError on open naming the file, row
    and id. Failed before: no token id was ever checked."""
    f = dataset / "shard-00000.input_ids.npy"
    ids = np.load(f)
    ids[3, 1] = 55  # the vocabulary has ids 0..54
    np.save(f, ids)
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["shards"][0]["sha256"]["input_ids"] = file_sha256(f)
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    message = re.escape(str(f)) + r" holds token id 55 \(row 3\), outside the vocabulary of 55"
    with pytest.raises(UserError, match=message):
        open_dataset(dataset)


def test_checksums_are_verified_once_per_file_per_process(dataset, monkeypatch):
    """The first open hashes every file; a second open of unchanged files hashes none; a
    file replaced since is hashed again, and its damage is found. Failed before: nothing
    was hashed by default, so nothing was found."""
    hashed = []

    def counting_sha256(path, *args):
        hashed.append(path.name)
        return file_sha256(path, *args)

    monkeypatch.setattr(integrity, "file_sha256", counting_sha256)
    open_dataset(dataset)
    assert len(hashed) == 3 * 4  # 3 shards x 4 arrays
    hashed.clear()
    open_dataset(dataset)
    assert hashed == []
    f = dataset / "shard-00002.length.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01
    replace_file(f, bytes(data))
    with pytest.raises(UserError, match="shard-00002.length.npy is corrupted"):
        open_dataset(dataset)
    assert hashed == ["shard-00002.length.npy"]


def test_batches_command_stops_on_a_corrupt_shard(dataset, tmp_path, capsys):
    """`bertjax batches` on a dataset with one flipped byte exits 2 with one line naming
    the shard file, and writes no .npz. Failed before: it exited 0 with the bad id in
    its batches."""
    flip_high_byte(dataset / "shard-00000.input_ids.npy", row=0, col=1)
    out = tmp_path / "b.npz"
    argv = ["batches", "--data", str(dataset), "--global-batch-size", "4", "--steps", "2"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard-00000.input_ids.npy is corrupted" in err[0]
    assert not out.exists()


def test_check_same_tokenizer(tmp_path):
    """Datasets prepared with two tokenizers of the same size differ in identity and the
    check names the side at fault and the vocabulary hashes; equal identities pass; a
    missing identity is its own error. Failed before: no such check on the data side."""
    tok_a = make_vocab(tmp_path / "a" / "vocab.txt")
    (tmp_path / "b").mkdir()
    words = (tmp_path / "a" / "vocab.txt").read_text().replace("w7\n", "x7\n")
    (tmp_path / "b" / "vocab.txt").write_text(words)
    rows = random_instances(4, L)
    ds_a = open_dataset(write_dataset(tmp_path / "ds_a", rows, tok_a, L))
    ds_b = open_dataset(write_dataset(tmp_path / "ds_b", rows, tmp_path / "b" / "vocab.txt", L))
    assert ds_a.vocab_size == ds_b.vocab_size
    check_same_tokenizer(ds_a.tokenizer_identity, dict(ds_a.tokenizer_identity), "ds_a")
    with pytest.raises(UserError) as e:
        check_same_tokenizer(ds_a.tokenizer_identity, ds_b.tokenizer_identity, "--data=ds_b")
    message = str(e.value)
    assert message.startswith("--data=ds_b was made with another tokenizer (vocab_sha256 ")
    sha_a, sha_b = (ds.tokenizer_identity["vocab_sha256"][:12] for ds in (ds_a, ds_b))
    assert f"{sha_b} instead of {sha_a}" in message and "lowercase" not in message
    cased = {**ds_a.tokenizer_identity, "lowercase": False}
    with pytest.raises(UserError, match="lowercase False instead of True"):
        check_same_tokenizer(ds_a.tokenizer_identity, cased, "eval")
    with pytest.raises(UserError, match="eval records no tokenizer identity"):
        check_same_tokenizer(ds_a.tokenizer_identity, None, "eval")
