"""SQuAD v1.1 / v2.0 examples from the official JSON files or the `datasets` hub, validated.

    examples = read_squad_json("dev-v2.0.json", "v2.0")
    examples = load_squad_hub("rajpurkar/squad", "validation", "v1.1")   # needs the network

Every answer must sit at its `answer_start` in the context, every context must hold text, and
the file's SQuAD version must be the one the task asks for; otherwise one `UserError` names the
file and the question id (nothing is skipped silently, unlike the original run_squad.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from bertjax.errors import UserError

VERSIONS = ("v1.1", "v2.0")
# The official files say "1.1" (v1.1) and "v2.0" (v2.0) in their top-level "version" field.
_DECLARED_VERSIONS = {"1.1": "v1.1", "v1.1": "v1.1", "2.0": "v2.0", "v2.0": "v2.0"}
HUB_VERSIONS = {
    "rajpurkar/squad": "v1.1",
    "squad": "v1.1",
    "rajpurkar/squad_v2": "v2.0",
    "squad_v2": "v2.0",
}


@dataclasses.dataclass(frozen=True)
class Answer:
    """One gold answer: its text and the character where it starts in the context."""

    text: str
    start: int

    @property
    def end(self) -> int:
        """One past the answer's last character in the context."""
        return self.start + len(self.text)


@dataclasses.dataclass(frozen=True)
class SquadExample:
    """One question about one context. `answers` is empty for a v2.0 unanswerable question;
    training uses the first answer, scoring takes the best over all of them."""

    qid: str
    question: str
    context: str
    answers: tuple[Answer, ...]
    is_impossible: bool = False
    title: str = ""


def gold_answers(examples: Iterable[SquadExample]) -> dict[str, list[str]]:
    """`{question id: [gold answer texts]}` (empty for unanswerable), what the metrics take."""
    return {ex.qid: [a.text for a in ex.answers] for ex in examples}


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise UserError(f"SQuAD version {version!r} is not one of {', '.join(VERSIONS)}")


def _mismatch(source: str, found: str, version: str, why: str) -> UserError:
    return UserError(
        f"{source} is a SQuAD {found} set ({why}) but the task is SQuAD {version}; "
        f"give a {version} file or choose the {found} task"
    )


def _check_example(ex: SquadExample, source: str) -> None:
    """Raises a UserError naming the question id when the example cannot be trained on."""
    where = f"{source}: question {ex.qid!r}"
    if not ex.context.strip():
        raise UserError(f"{where} has an empty context")
    if ex.is_impossible and ex.answers:
        raise UserError(f"{where} is marked is_impossible but lists {len(ex.answers)} answer(s)")
    if not ex.is_impossible and not ex.answers:
        raise UserError(f"{where} has no answer (only v2.0 questions marked is_impossible may)")
    for answer in ex.answers:
        if not answer.text:
            raise UserError(f"{where} has an empty answer text")
        found = ex.context[answer.start : answer.end] if answer.start >= 0 else ""
        if found != answer.text:
            raise UserError(
                f"{where}: answer {answer.text!r} is not at answer_start {answer.start} of its "
                f"context (the context has {found!r} there)"
            )


def _check_unique(examples: list[SquadExample], source: str) -> None:
    seen: set[str] = set()
    for ex in examples:
        if ex.qid in seen:
            raise UserError(f"{source}: question id {ex.qid!r} occurs more than once")
        seen.add(ex.qid)


def _answers(raw: list, source: str, qid: str) -> tuple[Answer, ...]:
    try:
        return tuple(Answer(str(a["text"]), int(a["answer_start"])) for a in raw)
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{source}: question {qid!r} has an answer without text/answer_start"
        ) from None


def examples_from_json(data: Mapping, version: str, source: str = "SQuAD JSON"):
    """Validated examples of a parsed official SQuAD JSON (`{"version": .., "data": [..]}`)."""
    _check_version(version)
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
        raise UserError(f"{source} is not a SQuAD file: it has no top-level 'data' list")
    examples = []
    has_impossible_key = False
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    qid = str(qa["id"])
                    has_impossible_key |= "is_impossible" in qa
                    answers = _answers(qa.get("answers", []), source, qid)
                    impossible = bool(qa.get("is_impossible", False))
                    examples.append(
                        SquadExample(
                            qid,
                            qa["question"],
                            context,
                            answers,
                            impossible,
                            article.get("title", ""),
                        )
                    )
    except (KeyError, TypeError) as e:
        raise UserError(f"{source} is not a SQuAD file: an entry lacks the key {e}") from None
    declared = data.get("version")
    found = _DECLARED_VERSIONS.get(str(declared), "v2.0" if has_impossible_key else "v1.1")
    if found != version:
        why = (
            f'its "version" is {declared!r}'
            if str(declared) in _DECLARED_VERSIONS
            else "its questions carry is_impossible"
            if has_impossible_key
            else "no question carries is_impossible"
        )
        raise _mismatch(source, found, version, why)
    if version == "v1.1" and has_impossible_key:
        raise UserError(
            f"{source} says it is SQuAD v1.1 but its questions carry is_impossible, "
            "which only v2.0 has"
        )
    for ex in examples:
        _check_example(ex, source)
    _check_unique(examples, source)
    return examples


def read_squad_json(path, version: str) -> list[SquadExample]:
    """Validated examples of an official SQuAD file (train-v1.1.json ... dev-v2.0.json)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"SQuAD file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    return examples_from_json(data, version, source=str(path))


def examples_from_rows(rows: Iterable[Mapping], version: str, source: str):
    """Validated examples of `datasets` rows (id, title, context, question, answers{text,
    answer_start}); a v1.1 task refuses rows without an answer, which only v2.0 has."""
    _check_version(version)
    examples = []
    for row in rows:
        qid = str(row["id"])
        answers = row["answers"]
        texts, starts = list(answers["text"]), list(answers["answer_start"])
        if len(texts) != len(starts):
            raise UserError(
                f"{source}: question {qid!r} has {len(texts)} answer texts but "
                f"{len(starts)} answer_start values"
            )
        if not texts and version == "v1.1":
            raise _mismatch(source, "v2.0", version, f"question {qid!r} has no answer")
        examples.append(SquadExample(
            qid, row["question"], row["context"],
            tuple(Answer(str(t), int(s)) for t, s in zip(texts, starts)),
            is_impossible=not texts, title=row.get("title", "")))  # fmt: skip
    for ex in examples:
        _check_example(ex, source)
    _check_unique(examples, source)
    return examples


def load_squad_hub(name: str, split: str, version: str) -> list[SquadExample]:
    """Validated examples of `rajpurkar/squad` (v1.1) or `rajpurkar/squad_v2` (v2.0) from the
    HuggingFace hub (downloads on first use; needs the network or a filled datasets cache)."""
    _check_version(version)
    if name not in HUB_VERSIONS:
        raise UserError(f"unknown SQuAD dataset {name!r}; known: {', '.join(HUB_VERSIONS)}")
    if HUB_VERSIONS[name] != version:
        raise _mismatch(name, HUB_VERSIONS[name], version, "by its name")
    import datasets

    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown split, hub errors: all one message
        raise UserError(f"could not load {name} split {split!r} from the hub: {e}") from None
    return examples_from_rows(rows, version, source=f"{name}[{split}]")
