"""`bertjax bench compile`: each start runs in a fresh process, the second start compiles from
the persistent cache the first one wrote, the table and the JSON agree; bad options fail
clearly."""

import json

import pytest

from bertjax import cli


def test_second_start_compiles_from_the_cache_the_first_wrote(capsys):
    """Tiny preset, scanned: the first start misses the empty cache and writes entries, the
    second (a fresh process) hits it and compiles faster; the table says so."""
    argv = ["bench", "compile", "--presets", "tiny", "--layouts", "scanned", "--batch-size", "2",
            "--seq-len", "16", "--json"]  # fmt: skip
    code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    (row,) = result["rows"]
    assert (row["preset"], row["layout"], row["platform"]) == ("tiny", "scanned", "cpu")
    assert row["first_cache_misses"] >= 1 and row["cache_entries_written"] >= 1
    assert row["second_cache_hits"] >= 1
    assert row["second_compile_s"] < row["first_compile_s"]
    assert row["params"] == 4_433_468  # BERT's 30522-token vocabulary, 2 layers of 128
    table_row = next(line for line in out.splitlines() if line.startswith("tiny"))
    assert table_row.split()[:3] == ["tiny", "scanned", "4.4M"] and table_row.split()[-1] == "yes"


@pytest.mark.parametrize(
    "flag,value,message",
    [
        (
            "--presets",
            "tiny,huge",
            "--presets='tiny,huge': expected a comma-separated list of tiny",
        ),
        (
            "--layouts",
            "stacked",
            "--layouts='stacked': expected a comma-separated list of unrolled",
        ),
        ("--remat-policy", "some", "--remat-policy='some': expected one of none,"),
    ],
)
def test_bad_options_are_one_clear_error(capsys, flag, value, message):
    """An unknown preset, layout or remat policy exits 2 with one line naming the flag."""
    assert cli.main(["bench", "compile", flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
