"""The PyTorch reference of `bertjax bench train` and `bench finetune`, timed in a process of
its own: transformers' BERT with torch.optim.AdamW and clipping, doing the step ours does on
the same batch. This module never imports JAX.

A process of its own rules out interference between the two frameworks' thread pools by
construction (docs/TRAINING.md, "Benchmark").

    python -m bertjax.bench.torch_reference < request.json    (prints {"step_s": ...} last)
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bertjax.errors import UserError


def seconds_per_torch_step(model, optimizer, inputs: dict, clip_norm: float, steps: int) -> float:
    """Seconds per PyTorch training step (forward with `inputs` incl. labels, backward,
    global-norm clipping when clip_norm > 0, optimizer step), after 2 warm-up steps."""
    import torch

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        if clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        return loss.detach().item()  # waits for the step, as our timer blocks on its output

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def _model_and_inputs(request: dict, batch: dict[str, np.ndarray]):
    """transformers' model of the request's `architectures` (BertForPreTraining,
    BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification or
    BertForMultipleChoice) and its inputs (HuggingFace's names) from a batch in our
    vocabulary."""
    import torch
    import transformers

    long = lambda key: torch.from_numpy(batch[key].astype(np.int64))
    inputs = {"input_ids": long("input_ids"), "token_type_ids": long("segment_ids"),
              "attention_mask": long("input_mask")}  # fmt: skip
    hf_config = transformers.BertConfig(**request["hf_config"])
    architecture = request["hf_config"]["architectures"][0]
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(hf_config)
    if architecture == "BertForPreTraining":
        labels = np.full(batch["input_ids"].shape, -100, np.int64)
        np.put_along_axis(labels, batch["masked_lm_positions"], batch["masked_lm_ids"], axis=1)
        inputs["labels"] = torch.from_numpy(labels)
        inputs["next_sentence_label"] = long("next_sentence_labels")
    elif architecture == "BertForQuestionAnswering":
        inputs["start_positions"] = long("start_positions")
        inputs["end_positions"] = long("end_positions")
    elif architecture == "BertForSequenceClassification":
        labels = torch.from_numpy(batch["labels"])
        # transformers picks the loss from the labels' dtype: MSE on floats, else cross-entropy.
        inputs["labels"] = labels if labels.is_floating_point() else labels.long()
    elif architecture == "BertForTokenClassification":
        # -100: a position the loss leaves out (our label weight 0): the same mean.
        labels = np.where(batch["label_weights"] > 0, batch["label_ids"], -100)
        inputs["labels"] = torch.from_numpy(labels.astype(np.int64))
    elif architecture == "BertForMultipleChoice":  # inputs [B, C, L], labels [B]
        inputs["labels"] = long("labels")
    else:
        raise ValueError(f"no PyTorch reference for {architecture}")
    return model.train(), inputs


def _time(request: dict) -> dict:
    """Times the request's step (see `time_in_subprocess`) in this process."""
    import torch

    with np.load(request["batch_file"]) as npz:
        batch = {k: npz[k] for k in npz.files}
    model, inputs = _model_and_inputs(request, batch)
    optim = request["optim"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim["peak_lr"],
                                  betas=(optim["b1"], optim["b2"]), eps=optim["eps"],
                                  weight_decay=optim["weight_decay"])  # fmt: skip
    step_s = seconds_per_torch_step(model, optimizer, inputs, optim["clip_norm"],
                                    request["steps"])  # fmt: skip
    return {
        "step_s": step_s,
        "torch_threads": torch.get_num_threads(),
        "pid": os.getpid(),
        "jax_loaded": "jax" in sys.modules,
    }


def time_in_subprocess(hf_config: dict, optim, batch: dict, steps: int) -> dict:
    """{"step_s", "torch_threads", "pid", "jax_loaded"} of transformers' model of
    `hf_config["architectures"]` (the config.json dict hf.config_to_hf writes) with AdamW at
    `optim`'s settings (peak_lr, b1, b2, eps, weight_decay, clip_norm) on `batch`, timed in a
    new Python process that imports no JAX."""
    if not all(importlib.util.find_spec(name) for name in ("torch", "transformers")):
        raise UserError("the PyTorch comparison needs torch and transformers (pip install "
                        "'bertjax[test]'); pass --no-hf to skip it")  # fmt: skip
    keys = ("peak_lr", "b1", "b2", "eps", "weight_decay", "clip_norm")
    with tempfile.TemporaryDirectory(prefix="bertjax-bench-") as tmp:
        batch_file = os.path.join(tmp, "batch.npz")
        np.savez(batch_file, **batch)
        request = {
            "hf_config": hf_config,
            "steps": steps,
            "optim": {k: float(optim[k]) for k in keys},
            "batch_file": batch_file,
        }
        # The child finds this very bertjax, wherever it was imported from.
        package_root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [package_root, os.environ.get("PYTHONPATH")])
            ),
        }
        proc = subprocess.run([sys.executable, "-m", "bertjax.bench.torch_reference"],
                              input=json.dumps(request), capture_output=True, text=True,
                              env=env, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the PyTorch reference process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    """Entry point of the child process: a JSON request on stdin, a JSON result on stdout."""
    print(json.dumps(_time(json.loads(sys.stdin.read()))), flush=True)


if __name__ == "__main__":
    main()
