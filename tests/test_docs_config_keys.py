"""Every `--config.KEY=VALUE` in the user docs (README.md, docs/*.md, launch/**/README.md) is
accepted by the config it goes with: the key exists, the value parses as its type, and the
config passes the checks a run makes before compiling (validate, the model config); every
`--config.KEY` named without a value is a key of that config. The overrides the docs give as
examples of errors are rejected as the docs say."""

import math
import re
from pathlib import Path

import pytest

from bertjax.errors import UserError
from bertjax.train import config as config_lib

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "launch").rglob("README.md"))]  # fmt: skip
OVERRIDE = re.compile(r"--config\.([A-Za-z_][\w.]*)=([^\s`'\")]+)")
BARE_KEY = re.compile(r"--config\.([A-Za-z_][\w.]*\w)(?![\w.=])")
CONFIG_FLAG = re.compile(r"--config[= ]([\w./-]+(?::\S+)?)")
PRETRAINING_DEFAULT, FINETUNE_DEFAULT = "bert_base_phase1", "finetune_glue"
# Overrides the docs show being rejected, and the words of the rejection they promise.
DOCUMENTED_ERRORS = {
    "train.steps=abc": "expected an integer",
    "optim.peak_rl=1e-4": "did you mean --config.optim.peak_lr?",
}


def commands(text: str):
    """(line number, text) of each command of the fenced code blocks (continuation lines
    joined) and of each prose paragraph."""
    in_code, start, pieces = False, 0, []
    for number, line in enumerate(text.splitlines() + [""], start=1):
        if line.strip().startswith("```"):
            if pieces:
                yield start, " ".join(pieces)
            in_code, pieces = not in_code, []
            continue
        if in_code:
            if not pieces:
                start = number
            pieces.append(line.rstrip().removesuffix("\\"))
            if not line.rstrip().endswith("\\"):
                yield start, " ".join(pieces)
                pieces = []
        elif line.strip():
            if not pieces:
                start = number
            pieces.append(line)
        elif pieces:
            yield start, " ".join(pieces)
            pieces = []


def config_of(command: str) -> str:
    """The config a command runs: its `--config NAME`, else a packaged recipe named among its
    words (a launcher's CONFIG), else the default of `bertjax finetune` or `bertjax train`."""
    flag = CONFIG_FLAG.search(command)
    if flag:
        return flag.group(1)
    names = set(config_lib.config_names())
    for word in command.split():
        if word.partition(":")[0] in names:
            return word
    if "bertjax finetune" in command:  # the CLI's default: the task kind's config
        from bertjax.finetune.kinds import default_config

        task = re.search(r"--task[= ]([\w-]+)", command)
        return default_config(task.group(1)) if task else FINETUNE_DEFAULT
    return PRETRAINING_DEFAULT


def documented(pattern, render):
    """(where, config, [render(match), ...]) of every command or paragraph of the docs in
    which `pattern` matches (the placeholder KEY left out)."""
    found = []
    for doc in DOCS:
        for line, command in commands(doc.read_text()):
            items = [render(m) for m in pattern.finditer(command) if m.group(1) != "KEY"]
            if items:
                found.append((f"{doc.relative_to(REPO)}:{line}", config_of(command), items))
    return found


FOUND = documented(OVERRIDE, lambda m: f"{m.group(1)}={m.group(2)}")
NAMED = documented(BARE_KEY, lambda m: m.group(1))


def check(config_name: str, overrides: list[str]) -> None:
    """What a run checks before compiling, on the devices the config's mesh asks for."""
    config = config_lib.load_config(config_name, overrides)
    if config_name.partition(":")[0].startswith("finetune_"):
        from bertjax.configs import finetune_schema
        from bertjax.finetune.kinds import make_kind

        finetune_schema(config).check(config)
        if config_name.partition(":")[0] != FINETUNE_DEFAULT:
            make_kind(config)  # the task kind's own checks (SQuAD's, NER's)
        return
    from bertjax.configs import base

    base.SCHEMA.check(config)
    devices = math.prod(v for v in config.mesh.values() if v > 0)
    config_lib.validate(config, devices, 1)
    config_lib.model_config(config.model, 30522)


def test_the_docs_set_config_keys_at_all():
    """The scan finds the docs' overrides (a broken pattern would make the next test vacuous)."""
    assert len(FOUND) >= 15, FOUND
    assert {"README.md", "docs/REPRODUCE.md", "docs/TRAINING.md", "launch/README.md"} <= {
        where.partition(":")[0] for where, _, _ in FOUND
    }


@pytest.mark.parametrize("where, config_name, overrides", FOUND, ids=[f[0] for f in FOUND])
def test_every_documented_override_is_accepted(where, config_name, overrides):
    """Each command's overrides, together, on its own config."""
    valid = [o for o in overrides if o not in DOCUMENTED_ERRORS]
    try:
        check(config_name, valid)
    except UserError as e:
        pytest.fail(f"{where}: --config {config_name} {' '.join(valid)}: {e}")


@pytest.mark.parametrize("where, config_name, keys", NAMED, ids=[f[0] for f in NAMED])
def test_every_key_the_docs_name_exists(where, config_name, keys):
    """A key named in prose (`raise --config.data.workers`) is a leaf key of its config."""
    valid = config_lib.flat_keys(config_lib.load_config(config_name))
    assert not set(keys) - set(valid), f"{where}: not keys of {config_name}"


@pytest.mark.parametrize("override, message", DOCUMENTED_ERRORS.items())
def test_the_documented_errors_are_errors(override, message):
    """The docs show these as mistakes; they must stay listed there and stay rejected."""
    assert any(override in found for _, _, found in FOUND), f"{override} left the docs"
    with pytest.raises(UserError, match=re.escape(message)):
        check(PRETRAINING_DEFAULT, [override])
