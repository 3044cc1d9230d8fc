"""Orbax checkpoints: one step directory holds the train state (params, optimizer state, step),
the RNG key, the data loader's state and the config (`checkpoint_metadata`); "is this a
checkpoint?" and "load the model in it" (`is_checkpoint_dir`, `load_model`, which also reads
HuggingFace folders).

Layout: WORKDIR/checkpoints/<step>/{state, loader, config}. Orbax writes each step under a
temporary name and renames it when complete, so a run killed mid-save leaves the previous
checkpoint as the latest one; a committed checkpoint that fails to restore (damaged files) is
skipped with a warning in favour of the one before it.
"""

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bertjax.errors import UserError
from bertjax.train import quiet_restore

DAMAGED_DIR = "checkpoints_damaged"  # beside checkpoints/: steps that failed to restore


def checkpoint_dir(workdir) -> epath.Path:
    """Where a workdir keeps its checkpoints (local path, gs://, anything etils.epath opens)."""
    workdir = str(workdir)
    if "://" not in workdir:
        # orbax refuses relative paths (`--workdir runs/x` is the common case).
        workdir = os.path.abspath(workdir)
    return epath.Path(workdir) / "checkpoints"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def _without_absl_warning(prefix: str):
    """Drops absl log records starting with `prefix` while the block runs."""
    absl_logger = logging.getLogger("absl")
    drop = _DropMessage(prefix)
    absl_logger.addFilter(drop)
    try:
        yield
    finally:
        absl_logger.removeFilter(drop)


class Checkpointer:
    """Saves and restores training checkpoints of one workdir.

    Args:
      workdir: the run's directory.
      keep: how many of the most recent checkpoints to keep.
      keep_every: also keep every checkpoint whose step is a multiple of this (None: none).
      async_save: write in a background thread while training goes on.
    """

    def __init__(
        self,
        workdir,
        *,
        keep: int = 3,
        keep_every: int | None = None,
        async_save: bool = True,
        read_only: bool = False,
    ):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,  # what orbax forces (and warns) otherwise
            keep_period=keep_every or None,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
        )
        self.directory = checkpoint_dir(workdir)
        self.read_only = read_only
        # Handlers named up front, so a fresh manager can read metadata before any save.
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "loader": ocp.JsonCheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
        }
        with _without_absl_warning("Given directory is read only"):
            # Orbax warns on every read-only manager; reading a run (export, eval, plot)
            # is read-only by design, not a problem the user should be told about.
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_handlers=handlers
            )
        self.last_save_blocking_s = 0.0  # how long the last save() held up the caller
        self.damaged_steps: list[int] = []  # skipped by restore, set aside by set_aside_damaged

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        state: Any,
        rng: jax.Array,
        loader_state: dict,
        config: dict,
        *,
        force: bool = False,
    ) -> bool:
        """Starts saving a checkpoint of `step` (asynchronously when enabled); returns whether
        one was started. The arrays are copied before this returns, so the caller may donate
        `state` to the next step at once."""
        start = time.perf_counter()
        # The key is the same on every process: saved as numpy, since orbax refuses a host-local
        # jax.Array in a multi-host run.
        tree = {"train": state, "rng": np.asarray(jax.random.key_data(rng))}
        saved = self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree),
                loader=ocp.args.JsonSave(loader_state),
                config=ocp.args.JsonSave(config),
            ),
            force=force,
        )
        self.last_save_blocking_s = time.perf_counter() - start
        return saved

    def restore(
        self, abstract_state: Any, shardings: Any, step: int | None = None, *, model_cfg=None
    ):
        """Restores (state, rng, loader_state, config) onto `shardings`.

        `abstract_state` gives shapes and dtypes (e.g. from `jax.eval_shape`), `shardings` the
        NamedShardings of the mesh to restore onto, which may differ from the mesh that saved:
        orbax reshards. With `step=None` the newest checkpoint that restores is taken: a
        damaged one is named in a warning and (unless read-only) moved aside to
        WORKDIR/checkpoints_damaged/, so that the run saves that step again. A checkpoint of
        another model than `model_cfg` (a changed config, not damage) is a UserError naming
        the fields that differ; nothing is moved.
        """
        steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        target = {
            "train": jax.tree.map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                abstract_state,
                shardings,
            ),
            "rng": None,
        }
        failures = []
        for candidate in steps:
            if model_cfg is not None:
                self._check_same_model(candidate, model_cfg)
            try:
                with quiet_restore.attempt():
                    return self._restore_step(candidate, target)
            except Exception as e:  # damage shows as any of orbax's, tensorstore's or OS errors
                reason = quiet_restore.reason(e)
                failures.append(f"step {candidate} ({reason})")
                if step is not None:
                    break
                aside = (
                    ""
                    if self.read_only
                    else (
                        f" (set aside in {self.directory.parent / DAMAGED_DIR} when the run starts)"
                    )
                )
                quiet_restore.warn(
                    f"checkpoint {self.directory / str(candidate)} could not be "
                    f"restored ({reason}); falling back to the one before{aside}"
                )
                self.damaged_steps.append(candidate)
        raise UserError(
            f"no checkpoint in {self.directory} could be restored: "
            f"{'; '.join(failures)}. Move {self.directory} aside to start afresh"
        )

    def _check_same_model(self, step: int, model_cfg) -> None:
        """UserError when checkpoint `step` holds another architecture than `model_cfg`."""
        from bertjax.model_config import ARCHITECTURE_FIELDS

        try:
            saved = self.restore_config(step).get(MODEL_CONFIG_KEY)
        except Exception:  # an unreadable config is damage: restoring the step will say so
            return
        if not saved:
            return
        differ = [
            f"{k}: {saved.get(k)!r} in the checkpoint, {getattr(model_cfg, k)!r} now"
            for k in ARCHITECTURE_FIELDS
            if saved.get(k) != getattr(model_cfg, k)
        ]
        if differ:
            raise UserError(
                f"the checkpoint of step {step} in {self.directory} holds another model than "
                f"the config ({'; '.join(differ)}): resume with the config it was trained "
                "with, or use a new --workdir"
            )
        if bool(saved.get("scan_layers", False)) != model_cfg.scan_layers:
            # Restored as it is, the other layout would fail like damage and be set aside.
            raise UserError(
                f"the checkpoint of step {step} in {self.directory} was written with "
                f"model.scan_layers={bool(saved.get('scan_layers'))} and cannot restore into "
                f"a state with model.scan_layers={model_cfg.scan_layers} (the run changed "
                "layouts after it: move the newer steps aside to resume from this one)"
            )

    def set_aside_damaged(self) -> None:
        """Moves the steps `restore` skipped as damaged aside (see `_set_aside`): called once
        the run's start-up checks passed, so that a refused start changes no file."""
        if not self.read_only:
            for step in self.damaged_steps:
                self._set_aside(step)
        self.damaged_steps = []

    def _set_aside(self, step: int) -> None:
        """Moves a damaged step to WORKDIR/checkpoints_damaged/<step>[.n] (process 0; the
        others wait), so that orbax no longer lists it and the run can save that step again."""
        if jax.process_index() == 0:
            aside_dir = self.directory.parent / DAMAGED_DIR
            aside_dir.mkdir(parents=True, exist_ok=True)
            dest, n = aside_dir / str(step), 0
            while dest.exists():
                n += 1
                dest = aside_dir / f"{step}.{n}"
            (self.directory / str(step)).rename(dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"bertjax_set_aside_{step}")
        self._manager.reload()

    def _restore_step(self, step: int, target):
        # The rng key data is a small array, identical everywhere: restored as numpy.
        target = dict(target, rng=np.zeros((2,), np.uint32))
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target),
                loader=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        tree = restored["state"]
        rng = jax.random.wrap_key_data(np.asarray(jax.device_get(tree["rng"]), np.uint32))
        return tree["train"], rng, dict(restored["loader"]), dict(restored["config"])

    def restore_params(self, step: int | None = None, sharding=None):
        """(params, config, step) of a checkpoint, without knowing its optimizer or mesh.

        The restore target comes from the checkpoint's own metadata, each array placed with
        `sharding` (default: whole on this process's first device), so export, `--init-from`
        and fine-tuning can read a checkpoint written on any topology. With `step=None` the
        newest checkpoint that restores is taken; a damaged one is named in a warning.
        """
        if step is not None and int(step) not in self.all_steps():
            raise FileNotFoundError(
                f"no complete checkpoint of step {step} in {self.directory}; "
                f"steps there: {self.all_steps()}"
            )
        steps = [int(step)] if step is not None else sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        failures = []
        for candidate in steps:
            try:
                with quiet_restore.attempt():
                    meta = self._manager.item_metadata(candidate)["state"].tree
                    target = jax.tree.map(
                        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                        meta,
                        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
                    )
                    restored = self._manager.restore(
                        candidate,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(target), config=ocp.args.JsonRestore()
                        ),
                    )
            except Exception as e:  # damage shows as any of orbax's, tensorstore's or OS errors
                reason = quiet_restore.reason(e)
                failures.append(f"step {candidate} ({reason})")
                if candidate != steps[-1]:
                    quiet_restore.warn(
                        f"checkpoint {self.directory / str(candidate)} could not "
                        f"be restored ({reason}); falling back to the one before"
                    )
                continue
            return restored["state"]["train"]["params"], dict(restored["config"]), candidate
        raise UserError(
            f"no checkpoint in {self.directory} could be restored: {'; '.join(failures)}"
        )

    def restore_config(self, step: int | None = None) -> dict:
        """Only the config saved with a checkpoint (newest when `step` is None)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        with quiet_restore.attempt():
            restored = self._manager.restore(
                step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
            )
        return dict(restored["config"])

    def wait(self) -> None:
        """Blocks until every started save is complete on storage."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager's threads."""
        self._manager.wait_until_finished()
        self._manager.close()


# --- what a checkpoint holds besides the arrays, and loading a model from one -------------------

# What a checkpoint's "config" item holds besides the training config (written by the loop).
MODEL_CONFIG_KEY = "model_config"
TOKENIZER_DIR_KEY = "tokenizer_dir"
TOKENIZER_IDENTITY_KEY = "tokenizer_identity"  # the training data's (data.integrity)


@dataclasses.dataclass
class LoadedModel:
    """Parameters (plain arrays) with the BertConfig they belong to and where they came from."""

    model_cfg: object
    params: dict
    source: str
    tokenizer_files: tuple = ()
    step: int | None = None
    tokenizer_identity: dict | None = None  # of the data it was trained on, when recorded


def checkpoint_metadata(model_cfg, config, tokenizer_dir, tokenizer_identity=None) -> dict:
    """The JSON saved beside the arrays in every training checkpoint."""
    return {
        "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
        MODEL_CONFIG_KEY: dataclasses.asdict(model_cfg),
        TOKENIZER_DIR_KEY: str(tokenizer_dir) if tokenizer_dir else "",
        TOKENIZER_IDENTITY_KEY: tokenizer_identity,
    }


def _tokenizer_files(tokenizer_dir: str) -> tuple[Path, ...]:
    if not tokenizer_dir or not Path(tokenizer_dir).is_dir():
        return ()
    return tuple(sorted(p for p in Path(tokenizer_dir).iterdir() if p.is_file()))


def latest_config(workdir) -> dict | None:
    """The training config saved with the newest readable checkpoint of `workdir` (the one a
    resumed run starts from), or None when it has none."""
    if not is_checkpoint_dir(workdir):
        return None
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        for step in reversed(ckpt.all_steps()):
            try:
                return ckpt.restore_config(step).get("config")
            except Exception:  # damaged: the run falls back to the one before, and so do we
                continue
        return None
    finally:
        ckpt.close()


def is_checkpoint_dir(path) -> bool:
    """True for a training workdir (WORKDIR/checkpoints/<step>/...)."""
    d = checkpoint_dir(path)
    return d.exists() and any(p.name.isdigit() for p in d.iterdir())


def load_model(path, step: int | None = None, encoder_only: bool = False) -> LoadedModel:
    """Loads a model from a training workdir (newest checkpoint, or `step`) or an HF folder.
    `encoder_only`: an HF folder may hold any BERT model (a fine-tuned head's too), and only
    its encoder (`bert`) is read."""
    from bertjax import hf, model_config
    from bertjax.train import workdir_io

    path = str(path)
    if not is_checkpoint_dir(path):
        if not (workdir_io.path(path) / hf.CONFIG_NAME).is_file():
            raise UserError(
                f"{path} is neither a training workdir with checkpoints (no "
                f"{checkpoint_dir(path)}/<step>) nor a HuggingFace "
                f"folder (no {hf.CONFIG_NAME})"
            )
        if "train" in json.loads((workdir_io.path(path) / hf.CONFIG_NAME).read_text()):
            # bertjax train's own config.json, not a HuggingFace one: say what is missing.
            raise UserError(
                f"{path} is a training workdir without checkpoints yet (no "
                f"{checkpoint_dir(path)}/<step>)"
            )
        if step is not None:
            raise UserError(f"{path} is a HuggingFace folder: --step applies to checkpoints only")
        try:
            if encoder_only:
                model_cfg, params, tokenizer_files = hf.read_encoder(path)
                return LoadedModel(model_cfg, params, path, tokenizer_files)
            loaded = hf.load_pretrained(path)
        except hf.CheckpointError as e:
            raise UserError(str(e)) from None
        return LoadedModel(loaded.config, loaded.params, path, loaded.tokenizer_files)
    ckpt = Checkpointer(path, read_only=True)
    try:
        params, meta, used_step = ckpt.restore_params(step)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    if MODEL_CONFIG_KEY not in meta:
        raise UserError(f"checkpoint in {path} has no model config; was it written by bertjax?")
    model_cfg = model_config.config_from_dict(meta[MODEL_CONFIG_KEY])
    return LoadedModel(
        model_cfg,
        params,
        f"{path} step {used_step}",
        _tokenizer_files(meta.get(TOKENIZER_DIR_KEY, "")),
        used_step,
        meta.get(TOKENIZER_IDENTITY_KEY),
    )
