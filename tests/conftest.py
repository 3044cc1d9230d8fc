"""Shared pytest set-up: 8 fake CPU devices for mesh tests (set before JAX is imported)."""

import contextlib
import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No hub and no network at test time: fail fast instead of hanging on a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _session_root(tmp_path_factory) -> Path:
    """The folder of this test session that every pytest-xdist worker shares (each worker's
    basetemp is a popen-gwN folder inside it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def fresh_compile():
    """JAX's persistent compilation cache off inside the block: what is compiled there is
    compiled afresh, so the compiler's warnings are printed (a program loaded from the cache
    prints none, and a test reading them would pass without compiling anything)."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", True)


@pytest.fixture(scope="session", autouse=True)
def _session_cache_home(tmp_path_factory):
    """Commands the tests start in processes of their own cache what they compile under this
    session's XDG_CACHE_HOME, never in the user's ~/.cache; every worker and process of the
    session shares it, so a program compiled once (the same tiny run trained, resumed or
    evaluated in several tests) is loaded by the next process, as on a user's machine."""
    cache_home = _session_root(tmp_path_factory) / "xdg_cache"
    cache_home.mkdir(exist_ok=True)
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache_home)
    yield cache_home
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(autouse=True)
def _session_compilation_cache(_session_cache_home, monkeypatch):
    """Every test compiles with JAX's persistent cache on, in this session's folder (the one
    its subprocesses use and a run's `compilation_cache_dir="auto"` means here, never the
    user's ~/.cache): the tests build the same small programs again and again, and the second
    build of one loads it. A test that reads what the compiler prints compiles with the cache
    off (`fresh_compile`); one that points the cache elsewhere gets the session's back after."""
    from bertjax.train import compile_cache

    session_cache = str(_session_cache_home / "bertjax" / "jax_cache")
    monkeypatch.setattr(compile_cache, "user_cache_dir", lambda: session_cache)
    compile_cache.configure(session_cache)
    yield
    compile_cache.configure(session_cache)


@pytest.fixture(scope="session")
def demo_corpus_dir(tmp_path_factory):
    """The whole offline demo corpus, one file, built once per session in a fresh process
    (as `bertjax demo` builds it; see helpers.demo_corpus_file)."""
    from tests.helpers import demo_corpus_file

    return Path(demo_corpus_file(tmp_path_factory.mktemp("demo_corpus"))).parent


DEMO_ENCODER_SEQ = 64  # positions of the demo encoder: the NER, SWAG and feature tests' length


@pytest.fixture(scope="session")
def demo_encoder(demo_documents, tmp_path_factory):
    """A random tiny BERT (2 layers of 64, 64 positions) saved by transformers, with a cased
    WordPiece vocabulary of 1,000 learnt from the demo corpus (capitals carry the generated NER
    task's ORG rule): the encoder of the NER, SWAG and feature tests, built once."""
    from tests.helpers import save_tiny_encoder

    sentences = [s for document in demo_documents for s in document]
    return save_tiny_encoder(
        tmp_path_factory.mktemp("demo_encoder"),
        sentences,
        DEMO_ENCODER_SEQ,
        layers=2,
        lowercase=False,
        vocab_size=1000,
    )


@pytest.fixture(scope="session")
def demo_documents(demo_corpus_dir):
    """The demo corpus's documents (lists of sentences)."""
    from bertjax.finetune.demo_tasks import corpus_documents

    return corpus_documents(demo_corpus_dir)


@pytest.fixture(scope="session")
def word_corpus(tmp_path_factory):
    """(corpus file, tokenizer folder): 3,000 generated documents in BERT's format (a sentence
    per line, a blank line between documents) and a WordPiece vocab.txt holding every word."""
    import random

    root = tmp_path_factory.mktemp("word_corpus")
    words = [f"w{i}" for i in range(200)]
    (root / "tok").mkdir()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."]
    (root / "tok" / "vocab.txt").write_text("\n".join(specials + words) + "\n")
    rng = random.Random(0)
    with open(root / "corpus.txt", "w", encoding="utf-8") as f:
        for _ in range(3000):
            for _ in range(rng.randint(2, 12)):
                f.write(" ".join(rng.choices(words, k=rng.randint(3, 20))) + " .\n")
            f.write("\n")
    return root / "corpus.txt", root / "tok"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A generated dataset of 128 rows of 32 tokens (vocabulary 256) with a 16-row eval split."""
    from bertjax.data.synthetic import synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    path = synthetic_dataset(root / "data", 128, 32, vocab_size=256, shard_size=64)
    synthetic_dataset(root / "eval_split", 16, 32, vocab_size=256, seed=1)
    (root / "eval_split").rename(path / "eval")
    return path


def shared_once(tmp_path_factory, name: str, build) -> Path:
    """A folder `build(folder)` fills once per test session, whichever xdist worker asks first
    (the others wait for it, then reuse it): for what several test files share and is too slow
    to make twice. pytest-xdist's own recipe for session fixtures executed once."""
    from filelock import FileLock

    folder = _session_root(tmp_path_factory) / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def _build_real_text(root: Path) -> None:
    from bertjax import cli
    from tests.helpers import demo_corpus_file

    # Documents in a seeded random order, so the held-out split is a sample of the same text.
    corpus = demo_corpus_file(root / "corpus")
    tokenizer = ["tokenizer", "train", "--input", corpus, "--kind", "wordpiece"]
    assert cli.main([*tokenizer, "--vocab-size", "4000", "--out", str(root / "tok")]) == 0
    # dupe-factor 5: five different sentence pairings (and NSP negatives) per document.
    prepare = ["prepare", "--input", corpus, "--tokenizer", str(root / "tok"), "--max-seq-len",
               "64", "--held-out", "1024", "--dupe-factor", "5", "--quiet"]  # fmt: skip
    assert cli.main([*prepare, "--out", str(root / "padded")]) == 0
    assert cli.main([*prepare, "--out", str(root / "packed"), "--pack"]) == 0


@pytest.fixture(scope="session")
def real_text(tmp_path_factory) -> Path:
    """The standard library's own docs (ROOT/corpus) -> WordPiece of 4,000 (ROOT/tok) ->
    64-token shards, padded and packed (ROOT/padded, ROOT/packed: the same sequences, the same
    held-out split of 1,024)."""
    return shared_once(tmp_path_factory, "real_text", _build_real_text)


# bert-tiny's learning run on real_text: a short, fast schedule (dropout off: 650 steps cannot
# overfit 44k pairs). 10 prediction slots per 64-token sequence (15% of 64, the floor) instead
# of the default 20 halve the MLM decoder's work, which is ~45% of this small model's step.
E2E_STEPS = 650
E2E_OVERRIDES = [
    f"--config.train.steps={E2E_STEPS}",
    "--config.train.global_batch_size=64",
    "--config.train.log_every=50",
    f"--config.train.eval_every={E2E_STEPS}",
    "--config.train.eval_batch_size=128",
    "--config.data.max_predictions_per_seq=10",
    "--config.optim.peak_lr=2e-3",
    "--config.optim.warmup_steps=65",
    "--config.optim.b2=0.98",
    "--config.model.hidden_dropout_prob=0",
    "--config.model.attention_probs_dropout_prob=0",
]


def train_on_real_text(real_text: Path, layout: str, workdir: Path, steps: int):
    """`bertjax train` of bert-tiny on real_text's `layout` rows for `steps` steps (E2E
    settings) in a 1-device process of its own; returns the finished process."""
    import subprocess

    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu"
    )
    return subprocess.run(
        [sys.executable, "-m", "bertjax.cli", "train", "--config", "bert_tiny", "--workdir",
         str(workdir), f"--config.data.train_dir={real_text / layout}",
         f"--config.data.eval_dir={real_text / 'padded' / 'eval'}", *E2E_OVERRIDES,
         f"--config.train.steps={steps}", f"--config.train.eval_every={steps}"],
        env=env, capture_output=True, text=True, timeout=840, check=False,
    )  # fmt: skip


@pytest.fixture(scope="session")
def pretrained_tiny(real_text, tmp_path_factory) -> Path:
    """A pretraining workdir (ROOT/run): bert-tiny after E2E_STEPS steps on real_text's padded
    rows, trained once per session: the learning test scores it, the downstream test
    fine-tunes it. ROOT/stderr.txt holds what the run printed there."""

    def build(root: Path) -> None:
        proc = train_on_real_text(real_text, "padded", root / "run", E2E_STEPS)
        (root / "stderr.txt").write_text(proc.stderr)
        assert proc.returncode == 0, proc.stderr[-3000:]

    return shared_once(tmp_path_factory, "pretrained_tiny", build) / "run"
