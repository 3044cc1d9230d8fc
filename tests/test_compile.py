"""`bertjax compile`: the train step compiled for TPU slices that are not here, by libtpu's TPU
compiler on this CPU host (the test extra installs it). Bert-tiny with scanned layers compiles
for a v5e slice with padded and with packed batches (one compile each, shared by the tests
that read its report): it fits, runs the splash kernel, and its compiled matmul FLOPs are the
model's to within 1% once the two known differences are taken out. A step that cannot fit,
and each bad input, is one clear error."""

import contextlib
import io
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import cli
from bertjax.commands import aot_compile as compile_cli
from bertjax.data.synthetic import synthetic_dataset
from bertjax.train import aot, hlo_cost, topology
from bertjax.train import config as config_lib

# bert-tiny as `bertjax train --config bert_tiny` runs it, with scanned layers and no attention
# dropout, so that `auto` attention is the splash kernel on TPU; a vocabulary of 1024 tokens
# (a dataset's) compiles in ~2/3 of the time of BERT's 30522.
TINY = [
    "--config",
    "bert_tiny",
    "--config.model.scan_layers=true",
    "--config.model.attention_impl=auto",
    "--config.model.attention_probs_dropout_prob=0",
    "--config.model.vocab_size=1024",
]
SLICE = "v5e:2x4"  # 8 chips: the recipes' data=-1 mesh puts 8 of bert_tiny's 64 rows on each
FLOPS_TOLERANCE = 0.01  # of the model's FLOPs: what recomputation may be with remat_policy=none


def compile_json(capsys, *args):
    """(exit code, report, stderr) of `bertjax compile ... --json`."""
    code = cli.main(["compile", *args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


@pytest.fixture(scope="module")
def reports():
    """The reports of bert-tiny's step compiled for SLICE: padded rows, and rows packed with up
    to 3 sequences (one compile each, ~30-45 s)."""
    result = {}
    for layout, extra in (("padded", []), ("packed", ["--max-sequences-per-row", "3"])):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = cli.main(["compile", *TINY, "--topology", SLICE, *extra, "--json"])
        result[layout] = (code, json.loads(out.getvalue()))
    return result


@pytest.mark.slow  # the module's two compiles: 17 s quiet, 64 s on a shared machine
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_bert_tiny_compiles_for_a_tpu_slice_fits_and_runs_splash(reports, layout):
    """Exit 0; per-chip memory from the compiler, adding up, far below a v5e's 16 GiB; the
    splash kernel's forward and backward passes are in the compiled program."""
    code, r = reports[layout]
    assert code == 0 and r["fits"] is True
    assert (r["topology"], r["chips"], r["device_kind"]) == (SLICE, 8, "TPU v5 lite")
    assert r["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert (r["model"]["attention"], r["model"]["scan_layers"]) == ("splash", True)
    m = r["memory_per_chip"]
    assert m["total_bytes"] == (
        m["argument_bytes"]
        + m["output_bytes"]
        - m["alias_bytes"]
        + m["temp_bytes"]
        + m["code_bytes"]
    )
    assert m["alias_bytes"] > 0  # the donated state
    assert 0 < m["total_bytes"] < m["limit_bytes"] < m["hbm_bytes"] == 16 * 2**30
    assert r["splash_attention"] and any(k.startswith("splash_mha_fwd") for k in r["kernels"])
    assert any(k.startswith("splash_mha_dq") for k in r["kernels"])
    batch = r["batch"]
    assert (batch["layout"], batch["seq_len"], batch["global_batch_size"]) == (layout, 128, 64)
    # Packed rows: 3 sequences share 0.15 x 128 + 3 = 22 prediction slots.
    assert batch["predictions_per_row"] == (20 if layout == "padded" else 22)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_compiled_matmul_flops_are_the_models(reports, layout):
    """Every scanned layer counted: the compiled matmuls equal model_flops_per_step less the
    heads it counts at every token and the attention hidden in the splash kernel, to within
    FLOPS_TOLERANCE (no remat: nothing recomputed). XLA's own cost analysis, which counts the
    scanned layers' loop body once, falls well short: why the program text is read instead."""
    _, r = reports[layout]
    f = r["flops"]
    assert f["attention_in_kernel"] > 0 and f["heads_at_every_token"] > 0
    assert abs(f["recomputed"]) <= FLOPS_TOLERANCE * f["model_per_step"]
    assert f["matmuls_in_loops"] and f["loops_of_unknown_trip_count"] == 0
    assert f["xla_cost_analysis_flops_per_chip"] * r["chips"] < 0.95 * f["compiled_matmul_per_step"]
    assert "unavailable" in r["roofline"]["compiler_estimate"]  # loops: no honest roofline
    at_peak = r["roofline"]["matmuls_at_peak"]
    assert at_peak["step_s"] == pytest.approx(f["compiled_matmul_per_step"] / r["chips"] / 197e12)


@pytest.mark.slow
def test_text_report_says_what_the_json_says(reports):
    """The text form of a report names the verdict, the bytes and the kernels."""
    _, r = reports["padded"]
    text = compile_cli.format_report({"config": "bert_tiny", **r})
    assert "fits" in text and "DOES NOT FIT" not in text
    assert f"{r['memory_per_chip']['total_bytes'] / 2**30:.2f} GiB of 16.00 GiB HBM" in text
    assert "splash_mha_fwd" in text and "the compiler's estimate (not a measurement)" in text


def test_a_step_that_cannot_fit_exits_2_naming_the_bytes(capsys):
    """A 400M-token vocabulary (its embedding and Adam moments alone are ~600 GiB) on a v5e:
    the TPU compiler refuses the step; exit 2, one sentence with the bytes and the remedies."""
    code, r, err = compile_json(
        capsys, *TINY, "--topology", SLICE, "--config.model.vocab_size=400000000"
    )
    assert code == 2 and r["fits"] is False and r["memory_per_chip"]["refused_by_compiler"]
    assert r["memory_per_chip"]["compiler_available_bytes"] == 15.75 * 2**30
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith("bertjax compile: error: the train step needs ")
    assert "GiB of the 15.20 GiB usable per TPU v5 lite chip (16.00 GiB HBM" in line
    assert "--config.model.remat_policy=full" in line and "--config.mesh.fsdp" in line
    assert "Traceback" not in err


def test_the_verdict_keeps_headroom_below_the_chips_hbm():
    """A step the compiler accepted still does not fit above (1 - HBM_HEADROOM) of HBM."""
    gib = 2**30

    def compiled_with(temp_gib):
        stats = types.SimpleNamespace(
            argument_size_in_bytes=gib,
            output_size_in_bytes=gib,
            alias_size_in_bytes=gib,
            generated_code_size_in_bytes=0,
            temp_size_in_bytes=int(temp_gib * gib),
        )
        return types.SimpleNamespace(memory_analysis=lambda: stats)

    assert aot.HBM_HEADROOM == 0.05
    assert aot.memory_report(compiled_with(14.0), "TPU v5 lite")["fits"]  # 15 of 16 GiB
    tight = aot.memory_report(compiled_with(14.5), "TPU v5 lite")  # 15.5: the compiler's
    assert not tight["fits"] and tight["limit_bytes"] == int(16 * gib * 0.95)  # limit is 15.75


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--topology", "v9:2x2"],
            "--topology v9:2x2: unknown topology; expected v4:AxBxC, "
            "v5e:AxB, v5p:AxBxC, v6e:AxB in chips, e.g. v4:2x2x1 (a v4-8)",
        ),
        (["--topology", "v5p:2x2"], "a v5p slice has 3 positive sides"),
        (["--topology", "v4:3x3x3"], "--topology v4:3x3x3: libtpu does not accept it"),
        (
            ["--topology", SLICE, "--config.mesh.data=3"],
            "mesh: axis sizes data=3 x fsdp=1 x tensor=1 multiply to 3, but there are 8 devices",
        ),
        (
            ["--topology", "v5p:4x4x4", "--config.mesh.fsdp=8"],
            "mesh: axis sizes data=8 x fsdp=8 "
            "x tensor=1 cannot be laid onto the 4x4x4 torus of the 64 TPU v5 chips",
        ),
        (
            ["--topology", SLICE, "--config.train.global_batch_size=12"],
            "train.global_batch_size=12 / train.grad_accum_steps=1 = 12 is not divisible by the "
            "data-parallel size mesh.data x mesh.fsdp = 8",
        ),
        (
            ["--topology", SLICE, "--seq-len", "100", "--config.model.attention_impl=splash"],
            "model.attention_impl=splash needs a sequence length that is a multiple of 128",
        ),
    ],
)
def test_bad_input_is_one_clear_error(capsys, args, message):
    """Each mistake exits 2 before anything compiles, with one line naming it."""
    code, _, err = compile_json(capsys, *TINY, *args)
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_without_libtpu_the_error_names_the_extra(capsys, monkeypatch):
    """This environment has the TPU compiler (the test extra installs it); without it the
    command says which extra to install."""
    assert topology.libtpu_installed()
    monkeypatch.setattr(topology, "libtpu_installed", lambda: False)
    code, _, err = compile_json(capsys, *TINY, "--topology", SLICE)
    assert code == 2
    assert (
        "--topology v5e:2x4 needs the TPU compiler, which is not installed: "
        "pip install 'bertjax[tpu]'" in err
    )


def test_topologies_give_one_device_per_chip():
    """v4 and v5p chips are one megacore device each; a 64-chip v5p slice spans 16 hosts; the
    Cloud TPU name v5litepod is v5e."""
    v4 = topology.tpu_slice("v4:2x2x1")
    assert (v4.chips, v4.hosts, v4.device_kind) == (4, 1, "TPU v4")
    v5p = topology.tpu_slice("v5p:4x4x4")
    assert (v5p.chips, v5p.hosts, v5p.device_kind) == (64, 16, "TPU v5")
    assert topology.tpu_slice("v5litepod:2x4").device_kind == "TPU v5 lite"
    assert topology.tpu_slice("v6e:2x4").device_kind == "TPU v6 lite"


@pytest.mark.parametrize("packed", [None, 3])
def test_abstract_batch_is_the_loaders_batch(tmp_path, packed):
    """The compiled step takes what `bertjax train` feeds it: the keys, shapes and dtypes of
    the loader's batch of a dataset (padded or packed), whose layout comes from its manifest."""
    from bertjax.bench import train as bench

    data = synthetic_dataset(
        tmp_path / "data", 64, max_seq_len=64, vocab_size=500, max_sequences_per_row=packed
    )
    config = config_lib.load_config(
        "bert_tiny", [f"data.train_dir={data}", "train.global_batch_size=16"]
    )
    layout = aot.dataset_layout(config, str(data))
    assert (layout.seq_len, layout.max_sequences_per_row, layout.vocab_size) == (64, packed, 500)
    _, (batch,) = bench.dataset_batches(config, str(data), 1)
    abstract = aot.abstract_batch(layout, 16)
    assert {k: (v.shape, np.dtype(v.dtype)) for k, v in abstract.items()} == {
        k: (v.shape, v.dtype) for k, v in batch.items()
    }


def test_shapes_come_from_the_dataset_or_the_flags_not_both(capsys, tmp_path):
    """With data.train_dir the dataset decides the length; --seq-len too is an error."""
    code, _, err = compile_json(
        capsys,
        *TINY,
        "--topology",
        SLICE,
        "--seq-len",
        "256",
        f"--config.data.train_dir={tmp_path}",
    )
    assert code == 2
    assert "--seq-len cannot be given with data.train_dir: the shapes come from the dataset" in err


def test_loop_bodies_are_counted_once_per_trip():
    """A scan of 5 matmuls: hlo_cost counts 5, XLA's cost analysis 1. The same for the TPU
    compiler, which turns the dot into a convolution (counted as the same FLOPs)."""
    M, K, N, trips = 64, 128, 256, 5

    def scanned(x_MxK, ws_TxKxN):
        return jax.lax.scan(lambda c, w: (c, x_MxK @ w), 0.0, ws_TxKxN)[1]

    args = (
        jax.ShapeDtypeStruct((M, K), jnp.float32),
        jax.ShapeDtypeStruct((trips, K, N), jnp.float32),
    )
    one = 2 * M * K * N
    cpu = jax.jit(scanned).lower(*args).compile()
    cost = hlo_cost.analyze(cpu.as_text())
    assert (cost.matmul_flops, cost.matmul_flops_loops_once) == (trips * one, one)
    assert cpu.cost_analysis()["flops"] < 2 * one  # XLA: the body once

    devices = topology.tpu_slice("v5e:2x2").devices
    mesh = jax.make_mesh((4,), ("x",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    tpu_args = [jax.ShapeDtypeStruct(a.shape, jnp.bfloat16, sharding=rep) for a in args]
    tpu = jax.jit(scanned).lower(*tpu_args).compile().as_text()
    assert "convolution(" in tpu
    assert hlo_cost.analyze(tpu).matmul_flops == trips * one


@pytest.mark.slow  # a third compile: ~10 s on a quiet machine, 55 s on a shared one
def test_full_remat_recomputes_each_layers_forward_matmuls(capsys):
    """What the report calls recomputed is the remat: with remat_policy=full (and the `xla`
    attention, whose matmuls are visible) it is every layer's forward matmuls once more."""
    code, r, _ = compile_json(
        capsys,
        "--config",
        "bert_tiny",
        "--config.model.scan_layers=true",
        "--config.model.remat_policy=full",
        "--config.model.vocab_size=1024",
        "--topology",
        SLICE,
    )
    assert code == 0 and r["model"]["attention"] == "xla"
    h, inter, layers, B, L = 128, 512, 2, 64, 128  # bert_tiny, 64 rows of 128 tokens
    forward = layers * (2 * (4 * h * h + 2 * h * inter) * B * L + 4 * B * L * L * h)
    assert r["flops"]["recomputed"] == pytest.approx(forward, rel=FLOPS_TOLERANCE)


@pytest.mark.slow  # two compiles: ~10 s each quiet, 20-30 s on a shared machine
@pytest.mark.parametrize(
    "task, head", [("sst2", "BertForSequenceClassification"), ("squad", "BertForQuestionAnswering")]
)
def test_fine_tuning_steps_compile_for_a_tpu_slice(capsys, task, head):
    """--task: the task kind's head on its fine-tuning config (GLUE's classifier at batch 32 x
    64 tokens, SQuAD's span head at 32 x 64 here) compiles for the slice and fits."""
    extra = (
        ["--config.squad.max_query_length=16", "--config.squad.doc_stride=16"]
        if (task == "squad")
        else []
    )
    code, r, err = compile_json(
        capsys,
        "--task",
        task,
        "--preset",
        "tiny",
        "--topology",
        SLICE,
        "--config.data.max_seq_len=64",
        *extra,
    )
    assert code == 0, err
    assert r["fits"] and r["model"]["head"] == head and r["model"]["preset"] == "tiny"
    assert (r["batch"]["task"], r["batch"]["seq_len"], r["batch"]["global_batch_size"]) == (
        task,
        64,
        32,
    )
    assert r["compiled_matmul_flops_per_step"] > 0
    # The fine-tuning configs keep attention dropout, so `auto` takes the explicit form.
    assert r["model"]["attention"] == "xla" and not r["splash_attention"]


def test_the_compilers_refusal_of_a_step_too_large_is_one_sentence(monkeypatch):
    """`bertjax train` and `bertjax finetune` compile through aot.compile_fitting: on a TPU
    the compiler refuses a step that cannot fit (RESOURCE_EXHAUSTED, its own bytes, as the
    v5e compiler words it in test_a_step_that_cannot_fit_exits_2_naming_the_bytes); that is
    a UserError naming the bytes and the remedies, not the compiler's trace. Another runtime
    error is raised as it is."""
    from bertjax.errors import UserError
    from bertjax.train import aot

    def lowered(message):
        def compile():
            raise jax.errors.JaxRuntimeError(message)

        return types.SimpleNamespace(compile=compile)

    refusal = (
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
        "space hbm. Used 19.83G of 15.75G hbm. Exceeded hbm capacity by 4.08G."
    )
    mesh = types.SimpleNamespace(shape={"data": 4, "fsdp": 1, "tensor": 1})
    monkeypatch.setattr(
        jax, "local_devices", lambda: [types.SimpleNamespace(device_kind="TPU v5 lite")]
    )
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    config = config_lib.load_config("finetune_squad")
    with pytest.raises(UserError) as refused:
        aot.compile_fitting(lowered(refusal), mesh, config)
    assert str(refused.value).startswith(
        "the train step needs 19.83 GiB of the 15.20 GiB usable per TPU v5 lite chip (16.00 "
        "GiB HBM, the TPU compiler refused it): try --config.model.remat_policy=full"
    )
    assert "--config.train.global_batch_size" in str(refused.value)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL: something else"):
        aot.compile_fitting(lowered("INTERNAL: something else"), mesh, config)


def test_train_logs_the_compiled_memory_and_refuses_a_step_that_cannot_fit(monkeypatch, capsys):
    """`bertjax train` reads the memory of the step it compiles anyway: on this CPU a log
    line; on a TPU whose HBM is known, a step that cannot fit is compile's one error naming
    the bytes, raised before the first step (here a TPU v5e's report, stubbed)."""
    from pathlib import Path

    from bertjax.errors import UserError
    from bertjax.train import loop

    run = loop.Run(
        config=config_lib.load_config("bert_tiny"),
        workdir=Path("unused"),
        mesh=types.SimpleNamespace(shape={"data": 8, "fsdp": 1, "tensor": 1}),
    )
    compiled = jax.jit(lambda x: x @ x).lower(jnp.ones((64, 64))).compile()
    loop.check_memory(run, compiled)
    line = capsys.readouterr().out
    assert "the compiled step needs 0.00 GiB per device" in line and "HBM" not in line

    gib = 2**30
    stats = types.SimpleNamespace(
        argument_size_in_bytes=4 * gib,
        output_size_in_bytes=4 * gib,
        alias_size_in_bytes=4 * gib,
        temp_size_in_bytes=12 * gib,
        generated_code_size_in_bytes=0,
    )
    too_big = types.SimpleNamespace(memory_analysis=lambda: stats)
    monkeypatch.setattr(
        jax, "local_devices", lambda: [types.SimpleNamespace(device_kind="TPU v5 lite")]
    )
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    with pytest.raises(
        UserError,
        match=r"needs 16.00 GiB of the 15.20 GiB usable per TPU v5 "
        r"lite chip .*remat_policy=full",
    ):
        loop.check_memory(run, too_big)
    assert "of 16.00 GiB HBM (usable 15.20 GiB): does not fit" in capsys.readouterr().out
