"""Reading SQuAD v1.1/v2.0 JSON files and `datasets` rows: fields, version checks, bad input."""

import copy
import json

import pytest

from bertjax.errors import UserError
from bertjax.finetune import squad_data

CONTEXT = "Zürich lies on Lake Zürich. 東京 is the capital of Japan."


def v1_file():
    """A small file in the official v1.1 layout (two articles, one with two answers)."""
    return {
        "version": "1.1",
        "data": [
            {"title": "Zürich", "paragraphs": [{"context": CONTEXT, "qas": [
                {"id": "q1", "question": "Where does Zürich lie?",
                 "answers": [{"text": "Lake Zürich", "answer_start": 15},
                             {"text": "on Lake Zürich", "answer_start": 12}]},
                {"id": "q2", "question": "What is the capital of Japan?",
                 "answers": [{"text": "東京", "answer_start": 28}]},
            ]}]},
            {"title": "Other", "paragraphs": [{"context": "A short one.", "qas": [
                {"id": "q3", "question": "How long?",
                 "answers": [{"text": "short", "answer_start": 2}]},
            ]}]},
        ],
    }  # fmt: skip


def v2_file():
    """The same in the v2.0 layout, plus an unanswerable question with plausible answers."""
    data = v1_file()
    data["version"] = "v2.0"
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qa["is_impossible"] = False
    data["data"][0]["paragraphs"][0]["qas"].append(
        {
            "id": "q4",
            "question": "Where is Berlin?",
            "is_impossible": True,
            "answers": [],
            "plausible_answers": [{"text": "Japan", "answer_start": 49}],
        }
    )
    return data


def write(tmp_path, data, name="squad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_reads_v1_and_v2_files(tmp_path):
    """Every question becomes an example with its context, all its answers and title; v2.0's
    unanswerable question has no answers; gold_answers is what the metrics take."""
    v1 = squad_data.read_squad_json(write(tmp_path, v1_file()), "v1.1")
    assert [ex.qid for ex in v1] == ["q1", "q2", "q3"]
    assert v1[0].context == CONTEXT and v1[0].title == "Zürich"
    assert [(a.text, a.start) for a in v1[0].answers] == [
        ("Lake Zürich", 15),
        ("on Lake Zürich", 12),
    ]
    assert CONTEXT[v1[1].answers[0].start : v1[1].answers[0].end] == "東京"
    v2 = squad_data.read_squad_json(write(tmp_path, v2_file()), "v2.0")
    assert [ex.is_impossible for ex in v2] == [False, False, True, False]
    assert v2[2].answers == () and v2[2].qid == "q4"
    assert squad_data.gold_answers(v2) == {
        "q1": ["Lake Zürich", "on Lake Zürich"],
        "q2": ["東京"],
        "q4": [],
        "q3": ["short"],
    }


def test_version_mismatch_is_one_error(tmp_path):
    """A v2.0 file given to a v1.1 task, or the reverse, is one clear error that names the
    file and both versions; without a "version" field the is_impossible keys decide."""
    v1, v2 = write(tmp_path, v1_file(), "v1.json"), write(tmp_path, v2_file(), "v2.json")
    with pytest.raises(UserError, match=r"v2.json is a SQuAD v2.0 set .* task is SQuAD v1.1"):
        squad_data.read_squad_json(v2, "v1.1")
    with pytest.raises(UserError, match=r"v1.json is a SQuAD v1.1 set .* task is SQuAD v2.0"):
        squad_data.read_squad_json(v1, "v2.0")
    unversioned = v2_file()
    del unversioned["version"]
    with pytest.raises(UserError, match="carry is_impossible"):
        squad_data.read_squad_json(write(tmp_path, unversioned), "v1.1")
    assert len(squad_data.read_squad_json(write(tmp_path, unversioned), "v2.0")) == 4
    contradictory = v2_file()
    contradictory["version"] = "1.1"
    with pytest.raises(UserError, match="says it is SQuAD v1.1 but its questions carry"):
        squad_data.read_squad_json(write(tmp_path, contradictory), "v1.1")
    with pytest.raises(UserError, match="version 'v3' is not one of v1.1, v2.0"):
        squad_data.read_squad_json(v1, "v3")


def edited(mutate):
    data = copy.deepcopy(v1_file())
    mutate(data["data"][0]["paragraphs"][0])
    return data


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda p: p["qas"][1]["answers"][0].update(answer_start=27),
            r"question 'q2': answer '東京' is not at answer_start 27 of its context",
        ),
        (
            lambda p: p["qas"][0]["answers"][1].update(text="on lake Zürich"),
            r"question 'q1': answer 'on lake Zürich' is not at answer_start 12",
        ),
        (
            lambda p: p["qas"][1]["answers"][0].update(answer_start=len(CONTEXT)),
            r"question 'q2': answer '東京' is not at answer_start",
        ),
        (lambda p: p.update(context="  \n "), r"question 'q1' has an empty context"),
        (lambda p: p["qas"][1].update(id="q1"), r"question id 'q1' occurs more than once"),
        (lambda p: p["qas"][0].update(answers=[]), r"question 'q1' has no answer"),
        (
            lambda p: p["qas"][0]["answers"][0].pop("answer_start"),
            r"question 'q1' has an answer without text/answer_start",
        ),
        (lambda p: p["qas"][0].pop("question"), r"not a SQuAD file: an entry lacks the key"),
    ],
)
def test_bad_examples_are_one_error_naming_the_id(tmp_path, mutate, message):
    """A misplaced or misspelt answer, an empty context, a repeated id, a v1.1 question
    without answers and a malformed entry: one UserError naming the file and question."""
    path = write(tmp_path, edited(mutate))
    with pytest.raises(UserError, match=message) as err:
        squad_data.read_squad_json(path, "v1.1")
    assert str(path) in str(err.value)


def test_unreadable_files(tmp_path):
    """A missing file, a file that is not JSON and JSON that is not SQuAD: one error each."""
    with pytest.raises(UserError, match="does not exist"):
        squad_data.read_squad_json(tmp_path / "nope.json", "v1.1")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json is not valid JSON"):
        squad_data.read_squad_json(tmp_path / "bad.json", "v1.1")
    with pytest.raises(UserError, match="no top-level 'data' list"):
        squad_data.read_squad_json(write(tmp_path, {"version": "1.1"}), "v1.1")


def hub_rows(data):
    """The official file flattened as the `datasets` corpora rajpurkar/squad(_v2) hold it."""
    return [{"id": qa["id"], "title": art["title"], "context": p["context"],
             "question": qa["question"],
             "answers": {"text": [a["text"] for a in qa["answers"]],
                         "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for art in data["data"] for p in art["paragraphs"] for qa in p["qas"]]  # fmt: skip


def test_datasets_rows_equal_the_json_examples(tmp_path):
    """`datasets` rows (here an in-memory datasets.Dataset, no network) give the same examples
    as the JSON file; v1.1 rows with an unanswerable question and a hub name of the other
    version are refused before anything is downloaded."""
    import datasets

    for version, data in (("v1.1", v1_file()), ("v2.0", v2_file())):
        rows = datasets.Dataset.from_list(hub_rows(data))
        from_rows = squad_data.examples_from_rows(rows, version, source="rows")
        assert from_rows == squad_data.examples_from_json(data, version)
    with pytest.raises(UserError, match=r"rows is a SQuAD v2.0 set \(question 'q4' has no an"):
        squad_data.examples_from_rows(hub_rows(v2_file()), "v1.1", source="rows")
    bad = hub_rows(v1_file())
    bad[2]["answers"]["answer_start"] = [3]
    with pytest.raises(UserError, match="question 'q3': answer 'short' is not at answer_start 3"):
        squad_data.examples_from_rows(bad, "v1.1", source="rows")
    with pytest.raises(UserError, match="rajpurkar/squad_v2 is a SQuAD v2.0 set"):
        squad_data.load_squad_hub("rajpurkar/squad_v2", "validation", "v1.1")
    with pytest.raises(UserError, match="unknown SQuAD dataset 'squad_v3'"):
        squad_data.load_squad_hub("squad_v3", "validation", "v2.0")
