"""The transformers side of `bertjax bench finetune --end-to-end`: a whole fine-tuning run as a
plain PyTorch loop (BertForSequenceClassification / BertForQuestionAnswering from the same
HuggingFace folder, torch AdamW with clipping and transformers' linear warm-up schedule),
scored on dev after every epoch, then the dev predictions written. This module never imports
JAX; it runs in a process of its own:

    python -m bertjax.bench.torch_finetune < request.json    (prints {"dev": ...} last)

The loop is what run_glue.py / run_qa.py do with their defaults: every row padded to
max_seq_len (pad_to_max_length), a fresh shuffle per epoch, the last batch partial.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bertjax.finetune import squad_data, squad_metrics


def glue_rows(path: Path) -> tuple[list[str], list[int]]:
    """(sentences, labels) of an SST-2-layout tsv (header `sentence<TAB>label`)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def glue_features(tokenizer, data: Path, seq_len: int) -> dict:
    """split -> (encoded inputs as torch tensors, labels)."""
    import torch

    out = {}
    for split in ("train", "dev"):
        sentences, labels = glue_rows(data / f"{split}.tsv")
        enc = tokenizer(sentences, truncation=True, max_length=seq_len, padding="max_length",
                        return_tensors="pt")  # fmt: skip
        out[split] = ({k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")},
                      torch.tensor(labels))  # fmt: skip
    return out


def squad_train_features(tokenizer, examples, seq_len: int, stride: int) -> dict:
    """run_qa.py's prepare_train_features: windows of the context after the question, the
    answer's token start/end (the [CLS] position where a window misses it)."""
    import torch

    enc = tokenizer([e.question for e in examples], [e.context for e in examples],
                    truncation="only_second", max_length=seq_len, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="max_length")  # fmt: skip
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        answer = examples[enc["overflow_to_sample_mapping"][i]].answers[0]
        first, last = answer.start, answer.start + len(answer.text)
        seq_ids = enc.sequence_ids(i)
        context = [t for t, s in enumerate(seq_ids) if s == 1]
        if offsets[context[0]][0] > first or offsets[context[-1]][1] < last:
            starts.append(0)
            ends.append(0)
            continue
        starts.append(next(t for t in context if offsets[t][1] > first))
        ends.append(next(t for t in reversed(context) if offsets[t][0] < last))
    inputs = {k: torch.tensor(enc[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}
    return {**inputs, "start_positions": torch.tensor(starts), "end_positions": torch.tensor(ends)}


def squad_dev_features(tokenizer, examples, seq_len: int, stride: int):
    """(model inputs, each window's example index, its context offsets (None off context))."""
    import torch

    enc = tokenizer([e.question for e in examples], [e.context for e in examples],
                    truncation="only_second", max_length=seq_len, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="max_length")  # fmt: skip
    offsets = [[o if s == 1 else None for o, s in zip(enc["offset_mapping"][i],
                                                       enc.sequence_ids(i))]
               for i in range(len(enc["input_ids"]))]  # fmt: skip
    inputs = {k: torch.tensor(enc[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}
    return inputs, list(enc["overflow_to_sample_mapping"]), offsets


def squad_answers(
    examples, window_example, offsets, start, end, n_best: int, max_answer: int
) -> dict[str, str]:
    """run_qa.py's postprocess_qa_predictions (v1.1): per question, the best-scoring span
    (start + end logit) over its windows among each window's n_best starts and ends."""
    best = {}
    for w, e in enumerate(window_example):
        for s in np.argsort(start[w])[::-1][:n_best]:
            for t in np.argsort(end[w])[::-1][:n_best]:
                if offsets[w][s] is None or offsets[w][t] is None or not 0 <= t - s < max_answer:
                    continue
                score = start[w][s] + end[w][t]
                if e not in best or score > best[e][0]:
                    best[e] = (score, examples[e].context[offsets[w][s][0] : offsets[w][t][1]])
    return {ex.qid: best.get(i, (0, ""))[1] for i, ex in enumerate(examples)}


def batches_of(n: int, batch_size: int, generator):
    """An epoch's batches of row indices: a fresh shuffle, the last batch partial."""
    import torch

    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def predict(model, inputs: dict, batch_size: int):
    """The model's outputs on every row, dropout off, in batches."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(inputs["input_ids"]), batch_size):
            out = model(**{k: v[i : i + batch_size] for k, v in inputs.items()})
            outs.append(
                out.logits
                if hasattr(out, "logits") and out.logits is not None
                else torch.stack([out.start_logits, out.end_logits], 0)
            )
    model.train()
    return torch.cat(outs, dim=-2 if outs[0].ndim == 3 else 0).numpy()


def run(request: dict) -> dict:
    """The run of `request` (see bench/finetune_e2e.py's `torch_request`); returns its
    phases' seconds and the dev scores of each epoch."""
    import torch
    import transformers

    t0 = time.perf_counter()
    torch.manual_seed(request["seed"])
    model_dir, data, out = Path(request["model"]), Path(request["data"]), Path(request["out"])
    seq_len, batch_size, epochs = request["seq_len"], request["batch_size"], request["epochs"]
    tokenizer = transformers.BertTokenizerFast.from_pretrained(model_dir)
    squad = request["task"] == "squad"
    if squad:
        train_ex = squad_data.read_squad_json(data / "train-v1.1.json", "v1.1")
        dev_ex = squad_data.read_squad_json(data / "dev-v1.1.json", "v1.1")
        train = squad_train_features(tokenizer, train_ex, seq_len, request["stride"])
        dev_inputs, window_example, offsets = squad_dev_features(
            tokenizer, dev_ex, seq_len, request["stride"]
        )
        model = transformers.BertForQuestionAnswering.from_pretrained(model_dir)
    else:
        glue = glue_features(tokenizer, data, seq_len)
        train = {**glue["train"][0], "labels": glue["train"][1]}
        dev_inputs, dev_labels = glue["dev"]
        model = transformers.BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    n = len(train["input_ids"])
    steps = epochs * -(-n // batch_size)
    o = request["optim"]
    # BERT's rule, as run_glue.py's: no decay on biases and LayerNorm weights.
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": o["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=o["peak_lr"],
        betas=(o["b1"], o["b2"]),
        eps=o["eps"],
    )
    warmup = int(o["warmup_fraction"] * steps)  # as finetune.train.optim_config
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, warmup, steps)
    generator = torch.Generator().manual_seed(request["seed"])
    seconds = collections.defaultdict(float, setup=time.perf_counter() - t0)
    dev, answers = [], {}
    model.train()
    for _ in range(epochs):
        t = time.perf_counter()
        for rows in batches_of(n, batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            loss = model(**{k: v[rows] for k, v in train.items()}).loss
            loss.backward()
            if o["clip_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o["clip_norm"])
            optimizer.step()
            schedule.step()
        seconds["train"] += time.perf_counter() - t
        t = time.perf_counter()
        outputs = predict(model, dev_inputs, batch_size)
        if squad:
            answers = squad_answers(
                dev_ex,
                window_example,
                offsets,
                outputs[0],
                outputs[1],
                request["n_best"],
                request["max_answer"],
            )
            dev.append(squad_metrics.squad_v1_scores(squad_data.gold_answers(dev_ex), answers))
        else:
            dev.append({"accuracy": float(np.mean(outputs.argmax(-1) == dev_labels.numpy()))})
        seconds["evaluate"] += time.perf_counter() - t
    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if squad:  # as `bertjax finetune`: the dev predictions and the model as a HF folder
        (out / "predictions.json").write_text(json.dumps(answers))
        model.save_pretrained(out / "hf_model")
    seconds["write"] = time.perf_counter() - t
    return {
        "dev": dev,
        "seconds": dict(seconds),
        "train_rows": n,
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(),
        "jax_loaded": "jax" in sys.modules,
    }


def main() -> None:
    """Entry point of the child process: a JSON request on stdin, a JSON result on stdout."""
    print(json.dumps(run(json.loads(sys.stdin.read()))), flush=True)


if __name__ == "__main__":
    main()
