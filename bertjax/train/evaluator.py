"""Held-out MLM/NSP evaluation over a whole split, built from explicit arguments so that the
training loop and `bertjax eval` share it."""

import math
import sys

from bertjax.data.masking import MaskingConfig


def _fitted(batch_size: int, rows: int, data_parallel: int) -> int:
    """The batch size, at most the split's rows rounded up to a multiple of the devices."""
    return min(batch_size, -(-rows // data_parallel) * data_parallel)


class Evaluator:
    """Evaluates parameters on every example of `eval_ds` exactly once.

    Args:
      eval_ds: the prepared split (`data.shards.Dataset`).
      batch_size: sequences per batch over all devices (a multiple of the data-parallel size);
        the last batch is padded with zero-weight rows.
      seed: seeds the masks, so that every evaluation of a run masks the same tokens.
      masking: the dynamic-masking settings (as in training).
      model: the `BertForPreTraining` to apply.
      mesh, rules, param_shardings: where the parameters and batches live.
      nsp: whether the next-sentence head is scored.
    """

    def __init__(
        self,
        eval_ds,
        *,
        batch_size: int,
        seed: int,
        masking: MaskingConfig,
        model,
        mesh,
        rules,
        param_shardings,
        nsp: bool = True,
    ):
        from bertjax.train import sharding
        from bertjax.train import step as step_lib

        self.eval_ds = eval_ds
        self.batch_size = _fitted(batch_size, len(eval_ds), sharding.data_parallel_size(mesh))
        if self.batch_size < batch_size:  # a batch of padding rows would only cost memory
            print(
                f"evaluation: batches of {self.batch_size}, not {batch_size}: that holds all "
                f"{len(eval_ds)} rows of {eval_ds.path}",
                file=sys.stderr,
                flush=True,
            )
        self.seed = seed
        self.masking = masking
        self.mesh = mesh
        self._eval_step = step_lib.jit_eval_step(mesh, rules, param_shardings, model=model, nsp=nsp)

    def eval(self, params) -> dict:
        """loss, mlm/nsp loss and accuracy, mlm_perplexity, masked_tokens, examples."""
        import jax

        from bertjax.data.loader import eval_batches
        from bertjax.train import losses, sharding

        totals = {}
        for batch in eval_batches(
            self.eval_ds,
            self.batch_size,
            seed=self.seed,
            masking=self.masking,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        ):
            sums = jax.device_get(self._eval_step(params, sharding.global_batch(batch, self.mesh)))
            for k, v in sums.items():  # float64 on the host: exact enough over any split
                totals[k] = totals.get(k, 0.0) + float(v)
        metrics = {k: float(v) for k, v in losses.metrics_from_sums(totals).items()}
        metrics["mlm_perplexity"] = math.exp(min(metrics["mlm_loss"], 700.0))  # no overflow
        metrics["masked_tokens"] = round(totals["mlm_weight_sum"])
        if "nsp_weight_sum" in totals:
            metrics["examples"] = round(totals["nsp_weight_sum"])
        return metrics
