"""Recipes shipped with the package: `--config NAME` loads `bertjax/configs/NAME.py`. Each
kind of config declares its keys' types and ranges beside them (a module's SCHEMA)."""

import importlib


def finetune_schema(config):
    """The SCHEMA of the fine-tuning config of `config.task`'s kind (its default config,
    finetune_glue's keys plus the kind's own section); finetune_glue's without a task."""
    from bertjax.finetune.kinds import default_config

    name = default_config(config.task) if config.task else "finetune_glue"
    return importlib.import_module(f"bertjax.configs.{name}").SCHEMA
