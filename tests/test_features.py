"""`bertjax features`: the output of google-research/bert's extract_features.py (its JSON keys,
tokens, the chosen layers rounded to 6 decimals, pairs with ` ||| `, its truncation), values
equal to transformers' hidden_states within 1e-5 (float32) from a HuggingFace folder of any
BERT head, BertModel's hidden states the same unrolled and scanned, a file read in batches;
bad input is one clear error and writes nothing."""

import dataclasses
import functools
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from bertjax import cli, encoder
from bertjax import model as model_lib
from bertjax.commands import features
from bertjax.data import load_tokenizer
from tests.conftest import DEMO_ENCODER_SEQ
from tests.helpers import TINY_NO_DROPOUT, unboxed_params

LINES = [
    "The Python Software Foundation maintains 3 of the modules.",
    "Return the number of items ||| The list holds 12 items.",
    "",  # an empty line: [CLS] [SEP], as the original
    "  leading and trailing spaces are stripped  ",
    " ".join(["a long line"] * 40),  # cut to --max-seq-len
    "a ||| " + " ".join(["the other side is much longer"] * 12),  # a pair cut longest first
]


def hf_hidden_states(folder: Path, rows: list[features.Encoded]) -> list[np.ndarray]:
    """transformers' BertModel hidden_states[1:] (every encoder layer) [layers, L, H] of each
    row, run one row at a time (no padding at all)."""
    import torch
    import transformers

    model = transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    out = []
    with torch.no_grad():
        for row in rows:
            result = model(input_ids=torch.tensor([row.ids]),
                           token_type_ids=torch.tensor([row.segments]),
                           output_hidden_states=True)  # fmt: skip
            out.append(np.stack([h[0].numpy() for h in result.hidden_states[1:]]))
    return out


@pytest.fixture(scope="module")
def extracted(demo_encoder, tmp_path_factory):
    """`bertjax features` on LINES (batches of 4, --max-seq-len 32, every layer), and the
    rows as the original encodes them."""
    root = tmp_path_factory.mktemp("features")
    (root / "in.txt").write_text("\n".join(LINES) + "\n")
    argv = ["features", "--init", str(demo_encoder), "--input", str(root / "in.txt"), "--out",
            str(root / "out.jsonl"), "--layers", "-1,0,-2", "--max-seq-len", "32",
            "--batch-size", "4"]  # fmt: skip
    assert cli.main(argv) == 0
    tokenizer = load_tokenizer(demo_encoder)
    rows = [features.encode_line(line, tokenizer, 32) for line in LINES]
    return root, [json.loads(x) for x in (root / "out.jsonl").read_text().splitlines()], rows


def test_the_output_is_extract_features_jsonl(extracted, demo_encoder):
    """One JSON line per input line with the original's keys in its order ("linex_index",
    "features"; per token "token", "layers"; per layer "index", "values"), its tokens (as
    transformers' tokenizer names them), 6 decimals; pairs and truncation as the original."""
    import transformers

    _, out, rows = extracted
    assert [r["linex_index"] for r in out] == list(range(len(LINES)))
    assert all(list(r) == ["linex_index", "features"] for r in out)
    hf_tokenizer = transformers.BertTokenizerFast.from_pretrained(demo_encoder)
    for record, row in zip(out, rows):
        assert [f["token"] for f in record["features"]] == hf_tokenizer.convert_ids_to_tokens(
            row.ids
        )
        for f in record["features"]:
            assert list(f) == ["token", "layers"] and [x["index"] for x in f["layers"]] == [
                -1,
                0,
                -2,
            ]
            assert all(list(x) == ["index", "values"] and len(x["values"]) == 64
                       for x in f["layers"])  # fmt: skip
            assert all(round(v, 6) == v for x in f["layers"] for v in x["values"])
    assert [len(r["features"]) for r in out][2] == 2  # [CLS] [SEP]
    assert len(out[4]["features"]) == 32 and len(out[5]["features"]) == 32
    # Pairs: segment 1 from the first [SEP] on; cut to 32 by dropping the longer side's end.
    tokenizer = load_tokenizer(demo_encoder)
    b = tokenizer.encode("The list holds 12 items.")
    assert rows[1].ids[-len(b) - 1 :] == [*b, tokenizer.sep_id]
    assert rows[1].segments == [0] * (len(rows[1].ids) - len(b) - 1) + [1] * (len(b) + 1)
    long_b = tokenizer.encode(LINES[5].partition(" ||| ")[2])
    assert rows[5].ids == [
        tokenizer.cls_id,
        *tokenizer.encode("a"),
        tokenizer.sep_id,
        *long_b[: 32 - 3 - len(tokenizer.encode("a"))],
        tokenizer.sep_id,
    ]
    assert features.truncate_pair([1, 2, 3], [4, 5, 6, 7, 8], 5) == ([1, 2, 3], [4, 5])
    assert features.truncate_pair([1, 2, 3], [4, 5, 6], 4) == ([1, 2], [4, 5])


def test_the_values_are_transformers_hidden_states(extracted, demo_encoder):
    """Each token's values equal transformers' BertModel hidden_states (layer -1: the last,
    0: the first encoder layer) within 1e-5, for rows padded in batches of 4 or not."""
    _, out, rows = extracted
    expected = hf_hidden_states(demo_encoder, rows)
    for record, hidden_NxLxH in zip(out, expected):
        for j, layer in enumerate((-1, 0, -2)):
            ours = np.array([f["layers"][j]["values"] for f in record["features"]])
            np.testing.assert_allclose(ours, hidden_NxLxH[layer], atol=1e-5, rtol=0)


def test_a_fine_tuned_heads_folder_gives_its_encoders_features(tmp_path, monkeypatch, capsys):
    """A HuggingFace BertForTokenClassification folder (a fine-tuned model: no pooler, a
    classifier) is read for its encoder alone; the input streams in batches of 2, with
    progress on stderr and a JSON summary on stdout."""
    import torch
    import transformers

    from tests.test_finetune import SPECIALS, WORDS

    (tmp_path / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n")
    config = transformers.BertConfig(vocab_size=len(SPECIALS + WORDS), hidden_size=32,
                                     num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16,
                                     num_labels=3)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(config).eval()
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "vocab.txt").write_text((tmp_path / "vocab.txt").read_text())
    lines = [" ".join(WORDS[(3 * i + k) % 30] for k in range(i % 9)) for i in range(7)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    argv = ["features", "--init", str(tmp_path / "model"), "--input", str(tmp_path / "in.txt"),
            "--out", str(tmp_path / "out.jsonl"), "--layers=-3", "--batch-size", "2",
            "--max-seq-len", "16"]  # fmt: skip
    monkeypatch.setattr(features, "PROGRESS_SECONDS", 0.0)
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert [line.split(" lines")[0] for line in captured.err.splitlines()
            if line.startswith("bertjax features: ")] == [
        "bertjax features: 2", "bertjax features: 4", "bertjax features: 6",
        "bertjax features: 7"]  # fmt: skip
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert (summary["lines"], summary["layers"], summary["max_seq_len"]) == (7, [-3], 16)
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    tokenizer = load_tokenizer(tmp_path / "model")
    rows = [features.encode_line(line, tokenizer, 16) for line in lines]
    for record, hidden in zip(out, hf_hidden_states(tmp_path / "model", rows)):
        ours = np.array([f["layers"][0]["values"] for f in record["features"]])
        np.testing.assert_allclose(ours, hidden[-3], atol=1e-5, rtol=0)
    assert len(out) == 7


def test_hidden_states_are_the_same_unrolled_and_scanned():
    """BertModel(output_hidden_states=True): every layer's output [layers, B, L, H], the last
    one the last_hidden_state; a scan_layers model on the stacked parameters gives the same
    (its scan stacks them only when asked); without the flag, two outputs as before."""
    cfg = TINY_NO_DROPOUT  # 2 layers of 128; its parameters shared with other tests
    params = unboxed_params(cfg)["bert"]
    rng = np.random.default_rng(0)
    ids = rng.integers(5, cfg.vocab_size, (3, 16)).astype(np.int32)
    mask = (np.arange(16)[None] < np.array([[16], [9], [4]])).astype(np.int32)

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def apply(model_cfg, params, hidden_states):
        return model_lib.BertModel(model_cfg).apply(
            {"params": params}, ids, 0 * ids, mask, output_hidden_states=hidden_states
        )

    last, pooled, hidden = apply(cfg, params, True)
    assert hidden.shape == (2, 3, 16, cfg.hidden_size)
    np.testing.assert_array_equal(hidden[-1], last)
    scanned_cfg, stacked = dataclasses.replace(cfg, scan_layers=True), encoder.stack_layers(params)
    s_last, s_pooled, s_hidden = apply(scanned_cfg, stacked, True)
    np.testing.assert_allclose(s_hidden, hidden, atol=1e-5, rtol=0)
    np.testing.assert_allclose(s_pooled, pooled, atol=1e-5, rtol=0)
    for model_cfg, tree in ((cfg, params), (scanned_cfg, stacked)):
        assert len(jax.eval_shape(apply, model_cfg, tree, False)) == 2


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setup, flags, message",
    [
        ("binary", "", "line 1: not UTF-8 text"),
        ("nul", "", "line 2: holds a NUL byte, so it is not a text file"),
        ("late_binary", "--batch-size 1", "line 3: not UTF-8 text"),
        ("empty", "", "is empty: give a text file"),
        (
            "text",
            "--layers -3",
            "--layers -3: the model has 2 encoder layers, so a layer index "
            "is between -2 and 1, not -3",
        ),
        ("text", "--layers 2", "not 2"),
        ("text", "--layers last", "--layers 'last': expected comma-separated integers"),
        (
            "text",
            f"--max-seq-len {DEMO_ENCODER_SEQ + 1}",
            f"--max-seq-len {DEMO_ENCODER_SEQ + 1} "
            f"is outside [3, the model's max_position_embeddings={DEMO_ENCODER_SEQ}]",
        ),
        ("existing", "", "already exists: pass --overwrite to replace it"),
        ("missing", "", "is not a file"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(
    demo_encoder, tmp_path, capsys, setup, flags, message
):
    """Exit code 2, one line naming the input, flag or file; no --out file (an existing one
    left as it was) and no temporary file beside it."""
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    content = {"binary": b"\x93NUMPY\x01\x00\xff\xfe", "nul": b"fine\nnot\x00text\n",
               "late_binary": b"one\ntwo\n\xff\xfe\n", "empty": b"", "text": b"some words\n",
               "existing": b"some words\n"}  # fmt: skip
    if setup in content:
        src.write_bytes(content[setup])
    if setup == "existing":
        out.write_text("mine\n")
    argv = ["features", "--init", str(demo_encoder), "--input", str(src), "--out", str(out),
            "--layers=-1", *flags.split()]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [src.name] * (setup != "missing") + [out.name] * (setup == "existing")
    )
    if setup == "existing":
        assert out.read_text() == "mine\n"


def test_overwrite_replaces_an_existing_file(demo_encoder, tmp_path):
    (tmp_path / "in.txt").write_text("a b c\n")
    (tmp_path / "out.jsonl").write_text("old\n")
    argv = [
        "features",
        "--init",
        str(demo_encoder),
        "--input",
        str(tmp_path / "in.txt"),
        "--out",
        str(tmp_path / "out.jsonl"),
        "--overwrite",
        "--layers",
        "-1",
    ]
    assert cli.main(argv) == 0
    record = json.loads((tmp_path / "out.jsonl").read_text())
    assert record["linex_index"] == 0 and len(record["features"]) >= 3
