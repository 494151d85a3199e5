"""Nothing lost, nothing let in: kill-anywhere resume (the soak), loading that runs no code,
YAML that cannot explode, runs refused when edited in a key that shapes the model, and
damaged run directories answered with one line naming the file."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, assert_one_line_error, invoke, write_pipeline

import nlpseq
from nlpseq import checkpoint as ckpt
from nlpseq.config import MAX_YAML_NODES, load_config
from nlpseq.errors import NlpseqError

DEMO = ROOT / "corpora"
DATA = {
    "sentiment": {"train": DEMO / "sentiment/train.tsv", "dev": DEMO / "sentiment/dev.tsv"},
    "ner": {"train": DEMO / "ner/train.txt", "dev": DEMO / "ner/dev.txt"},
    "chargen": {"train": DEMO / "chargen/lanterns.txt"},
    "translate": {"train": DEMO / "translate/train.en", "train_target": DEMO / "translate/train.de",
                  "dev": DEMO / "translate/dev.en", "dev_target": DEMO / "translate/dev.de"},
}
LIMITS = {"sentiment": 40, "ner": 20, "chargen": 1500, "translate": 20}
#: the CLI command that predicts with each task's run, and an input line for it
PREDICT = {"sentiment": ("predict", "a warm film"), "ner": ("predict", "John lives in Paris"),
           "chargen": ("predict", "the lantern"), "translate": ("translate", "a man sleeps")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny trained run per task (one epoch), shared read-only: copy before changing."""
    from nlpseq.trainer import train

    base = tmp_path_factory.mktemp("runs")
    out = {}
    for task, data in DATA.items():
        pipeline = write_pipeline(base, task, data, {"train.epochs": 1,
                                                     "data.limit": LIMITS[task]})
        train(load_config(pipeline), base / task, log=lambda _m: None, progress=False)
        out[task] = base / task
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def predict(task: str, run: Path):
    command, line = PREDICT[task]
    return invoke(command, run, input=line + "\n")


# --- kill anywhere, resume exactly --------------------------------------------------------
@pytest.mark.heavy
def test_soak_three_kills(tmp_path):
    """Three SIGKILLs of real training processes (one task): every kill survived, the final
    weights and history equal an uninterrupted run's."""
    import soak as soak_script

    figures = soak_script.soak(3, 0, ["chargen"], tmp_path, log=lambda _m: None)
    assert figures.kills == 3
    assert not figures.failed(), figures.problems


@pytest.mark.slow
def test_soak_two_hundred_kills(tmp_path):
    import soak as soak_script

    figures = soak_script.soak(200, 0, list(soak_script.TASKS), tmp_path, log=lambda _m: None)
    assert figures.kills >= 200
    assert not figures.failed(), figures.problems


def test_folder_left_by_a_writer_killed_before_its_config_is_a_new_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ckpt.LOCK).touch()
    (out / ".config.yaml.x1y2.tmp").write_text("task: sent")
    ckpt.RunDir(out).check_writable()  # no error
    (out / "notes.txt").write_text("mine")
    with pytest.raises(NlpseqError, match="not a run directory"):
        ckpt.RunDir(out).check_writable()


# --- loading runs no code -----------------------------------------------------------------
@pytest.mark.parametrize("task", sorted(DATA))
def test_loading_and_predicting_never_unpickle(task, runs, monkeypatch):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("unpickling while loading a run")

    for module, name in [(pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(module, name, forbidden)
    loaded = nlpseq.load(runs[task])
    assert loaded.name == task
    result = predict(task, runs[task])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.strip()


TAG = "task: !!python/object/apply:os.system ['echo owned > /dev/null']\n"


def alias_bomb(levels: int = 9) -> str:
    """A few lines of YAML that expand to 10**levels strings: a billion with 9 levels."""
    lines = ["task: sentiment", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def bounded(call) -> tuple[NlpseqError, int]:
    """The NlpseqError ``call`` raises and the peak memory it allocated (bytes)."""
    tracemalloc.start()
    try:
        with pytest.raises(NlpseqError) as caught:
            call()
        return caught.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("text, fragment", [(TAG, "python/object"),
                                            (alias_bomb(), f"{MAX_YAML_NODES:,} values")])
def test_pipeline_with_python_tag_or_alias_bomb(text, fragment, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    error, peak = bounded(lambda: load_config(path))
    assert fragment in str(error) and str(path) in str(error)
    assert peak < 5 * 2**20
    assert_one_line_error(invoke("train", path, "--out", tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, fragment", [(TAG, "python/object"),
                                            (alias_bomb(), f"{MAX_YAML_NODES:,} values")])
def test_run_config_with_python_tag_or_alias_bomb(text, fragment, runs, tmp_path):
    run = copy_run(runs["sentiment"], tmp_path)
    (run / ckpt.CONFIG).write_text(text)
    _, peak = bounded(lambda: nlpseq.load(run))
    assert peak < 5 * 2**20
    assert_one_line_error(predict("sentiment", run), fragment, ckpt.CONFIG)


def test_aliases_that_expand_a_little_are_fine(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("task: sentiment\nmodel: &m {hidden_size: 12}\n"
                    "train: {epochs: &n 3, patience: *n}\n")
    config = load_config(path)
    assert (config.train.epochs, config.train.patience) == (3, 3)


def test_deeply_nested_yaml_is_an_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("task: sentiment\ntrain: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(NlpseqError, match="nested too deeply|invalid YAML"):
        load_config(path)


def test_set_value_that_is_an_alias_bomb_stays_a_string(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("task: sentiment\n")
    bomb = "[&a [x,x,x,x,x,x,x,x,x,x], " + ", ".join(["*a"] * 2000) + "]"
    _, peak = bounded(lambda: load_config(path, [f"train.lr=[{bomb}, {bomb}]"]))
    assert peak < 5 * 2**20


def test_hub_datasets_never_run_dataset_scripts(monkeypatch):
    import socket
    import types

    from nlpseq.corpora import load_hub

    calls = []

    def load_dataset(name, config=None, split=None, trust_remote_code=None):
        calls.append(trust_remote_code)
        return []

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: types.SimpleNamespace(
        close=lambda: None))
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    load_hub("glue", "sst2", "train")
    assert calls == [False]  # passed, and off


def test_hub_datasets_without_the_option_are_not_given_it(monkeypatch):
    import socket
    import types

    from nlpseq.corpora import load_hub

    calls = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: types.SimpleNamespace(
        close=lambda: None))
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(
        load_dataset=lambda name, config=None, split=None: calls.append(name) or []))
    load_hub("glue", "sst2", "train")
    assert calls == ["glue"]


def test_gensim_data_downloads_need_the_opt_in(monkeypatch):
    import socket

    from nlpseq.embeddings import GENSIM_DATA_OPT_IN, load_vectors

    attempts = []
    monkeypatch.delenv(GENSIM_DATA_OPT_IN, raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: attempts.append(a))
    with pytest.raises(NlpseqError, match=f"{GENSIM_DATA_OPT_IN}=1"):
        load_vectors("glove-wiki-gigaword-50", "gensim-data")
    assert attempts == []  # refused before any connection


# --- edited run directories ---------------------------------------------------------------
def edit_config(run: Path, dotted: str, value) -> None:
    config = yaml.safe_load((run / ckpt.CONFIG).read_text())
    section, name = dotted.split(".")
    config[section][name] = value
    (run / ckpt.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.mark.parametrize("task, dotted, value", [
    ("sentiment", "model.pooling", "last"),
    ("sentiment", "tokenizer.lowercase", False),
    ("ner", "data.tag_scheme", "iob2"),
    ("ner", "model.output", "softmax"),
    ("chargen", "model.hidden_size", 12),
    ("translate", "model.attention", "dot"),
])
def test_a_key_that_shapes_the_model_cannot_change_after_training(task, dotted, value, runs,
                                                                  tmp_path):
    run = copy_run(runs[task], tmp_path)
    edit_config(run, dotted, value)
    line = assert_one_line_error(predict(task, run), dotted, "trained with", ckpt.CONFIG)
    assert "Traceback" not in line


@pytest.mark.parametrize("task, dotted, value", [
    ("sentiment", "eval.batch_size", 3),
    ("sentiment", "train.device", "cpu"),
    ("sentiment", "model.dropout", 0.0),
    ("translate", "eval.beam", 1),
    ("translate", "model.max_length_b", 3),
    ("chargen", "model.eval_context", 4),
])
def test_keys_used_only_in_training_or_decoding_stay_editable(task, dotted, value, runs,
                                                              tmp_path):
    run = copy_run(runs[task], tmp_path)
    edit_config(run, dotted, value)
    result = predict(task, run)
    assert result.exit_code == 0, (result.output, result.exception)


def test_every_checkpoint_records_what_its_weights_were_trained_with(runs):
    record = ckpt.read_json(ckpt.RunDir(runs["ner"]).file(ckpt.TRAINED_WITH))
    assert record["data.tag_scheme"] == "iob1" and record["model.output"] == "crf"
    assert record["task"] == "ner"
    assert not any(k.startswith(("train.", "eval.")) for k in record)
    assert "model.dropout" not in record


def test_resume_with_a_changed_shaping_key_is_refused(tmp_path):
    from nlpseq.trainer import train

    pipeline = write_pipeline(tmp_path, "sentiment", DATA["sentiment"],
                              {"train.epochs": 1, "data.limit": 20})
    train(load_config(pipeline), tmp_path / "run", log=lambda _m: None, progress=False)
    changed = load_config(pipeline, ["train.resume=true", "train.epochs=2",
                                     "model.hidden_size=4"])
    with pytest.raises(NlpseqError, match="model.hidden_size is 4 but the weights were"):
        train(changed, tmp_path / "run", log=lambda _m: None, progress=False)


# --- damaged run directories --------------------------------------------------------------
def damage(path: Path, how: str) -> None:
    """Truncate, empty, replace with another JSON shape, or remove ``path``."""
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: max(len(path.read_bytes()) // 2, 1)])
    elif how == "other-json":
        path.write_text(json.dumps([1, "two", {"three": None}]))


def run_files(run: Path) -> list[str]:
    """Every file of a run directory, relative (the checkpoint folder's as ``CKPT/name``)."""
    current = ckpt.RunDir(run).current()
    names = [p.name for p in run.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix != ".png"]
    return sorted(names) + sorted(f"CKPT/{p.name}" for p in current.iterdir())


@pytest.mark.parametrize("how", ["missing", "empty", "truncated", "other-json"])
@pytest.mark.parametrize("task", sorted(DATA))
def test_damaged_run_directory_is_a_one_line_error_naming_the_file(task, how, runs,
                                                                   tmp_path):
    """Each file of the run, damaged in turn: predict answers with one line naming it (or,
    for files prediction does not read, still predicts)."""
    unread = {ckpt.HISTORY, ckpt.LAST_WEIGHTS, ckpt.OPTIMIZER, ckpt.TRAINER_STATE,
              ckpt.METRICS}
    if how == "missing":  # runs written before the record existed load unchecked
        unread.add(ckpt.TRAINED_WITH)
    for relative in run_files(runs[task]):
        run = copy_run(runs[task], tmp_path / f"{relative.replace('/', '_')}-{how}")
        path = run / relative.replace("CKPT", str(ckpt.RunDir(run).current().relative_to(run)))
        damage(path, how)
        result = predict(task, run)
        if path.name in unread and result.exit_code == 0:
            continue
        if path.name == ckpt.CONFIG and how == "truncated" and result.exit_code == 0:
            # cut at a line end it is still a valid config whose missing keys take their
            # defaults; trained_with.json vouches that none of them shapes the model
            load_config(path)
            continue
        assert_one_line_error(result, path.name)


@pytest.mark.parametrize("how", ["missing", "empty", "truncated", "other-json"])
def test_resuming_from_a_damaged_checkpoint_is_a_one_line_error_naming_the_file(how, runs,
                                                                                 tmp_path):
    """The files only resuming reads, damaged in turn: ``train --set train.resume=true``
    answers with one line naming the file."""
    for name in (ckpt.TRAINER_STATE, ckpt.OPTIMIZER, ckpt.LAST_WEIGHTS, ckpt.HISTORY):
        run = copy_run(runs["sentiment"], tmp_path / f"{name}-{how}")
        damage(ckpt.RunDir(run).file(name), how)
        if how == "truncated" and name == ckpt.HISTORY:  # a whole first record may remain
            (ckpt.RunDir(run).file(name)).write_text('{"epoch": 1, "st')
        result = invoke("train", run / ckpt.CONFIG, "--out", run, "--quiet",
                        "--set", "train.resume=true", "--set", "train.epochs=2")
        assert result.exit_code == 1 and "Traceback" not in result.output
        error = result.stderr.strip().splitlines()[-1]  # after the training log's lines
        assert error.startswith("error: ") and name in error, error


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_resume_keeps_the_learning_rate_schedule(schedule, tmp_path, monkeypatch):
    """Killed after the second of four evaluations and resumed: the learning rates (and so
    the weights) are those of the uninterrupted run; the schedule restarts from the
    configured rate, not from the last scheduled one the optimizer state holds."""
    from nlpseq import trainer

    pipeline = write_pipeline(tmp_path, "chargen", DATA["chargen"], {
        "data.limit": 1500, "train.epochs": 2, "train.evals_per_epoch": 2,
        "train.schedule": schedule})

    def run(out, *overrides):
        return trainer.train(load_config(pipeline, list(overrides)), out,
                             log=lambda _m: None, progress=False)

    run(tmp_path / "straight")
    commit, commits = trainer.commit, []

    def die_after_second(s, *args):
        commit(s, *args)
        commits.append(1)
        if len(commits) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "commit", die_after_second)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed")
    monkeypatch.setattr(trainer, "commit", commit)
    run(tmp_path / "killed", "train.resume=true")
    rates = [[r["lr"] for r in ckpt.RunDir(tmp_path / name).history()]
             for name in ("straight", "killed")]
    assert rates[0] == rates[1] and len(set(rates[0])) == 4
    final = [ckpt.RunDir(tmp_path / name).file(ckpt.LAST_WEIGHTS).read_bytes()
             for name in ("straight", "killed")]
    assert final[0] == final[1]


# --- the native kernel cache --------------------------------------------------------------
@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    """A stand-in C++ compiler that logs each call and writes a (not loadable) library; with
    ``fail`` it fails the way g++ does. Returns (make(fail) -> command, calls())."""
    from nlpseq import native

    log = tmp_path / "calls.log"
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.delenv("NLPSEQ_NATIVE", raising=False)
    monkeypatch.setenv("NLPSEQ_CACHE", str(tmp_path / "cache"))

    def make(fail: bool = False, name: str = "fakecc") -> str:
        script = tmp_path / name
        body = ('echo "x.cpp:1:1: error: boom" >&2; exit 1' if fail else
                'while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done; '
                'echo not-a-library > "$out"')
        script.write_text(f'#!/bin/sh\necho "$0" >> {log}\n{body}\n')
        script.chmod(0o755)
        return str(script)

    def calls() -> list[str]:
        return log.read_text().split() if log.exists() else []

    return make, calls


def test_kernel_cache_is_private_and_ccache_style_cxx_works(fake_compiler, tmp_path,
                                                            monkeypatch):
    from nlpseq import native

    make, calls = fake_compiler
    wrapper = tmp_path / "wrap"
    wrapper.write_text(f'#!/bin/sh\necho wrap >> {tmp_path / "calls.log"}\nexec "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CXX", f"{wrapper} {make()}")  # as CXX="ccache g++"
    library = native.build()
    assert library.read_text() == "not-a-library\n"
    assert calls() == ["wrap", str(tmp_path / "fakecc")]
    assert (native.cache_dir().stat().st_mode & 0o777) == 0o700
    assert native.build() == library and len(calls()) == 2  # cached: no second compile


@pytest.mark.parametrize("problem", ["writable by others", "belongs to another user"])
def test_kernel_cache_others_could_write_is_refused(problem, fake_compiler, monkeypatch):
    import os

    from nlpseq import native

    make, calls = fake_compiler
    monkeypatch.setenv("CXX", make())
    folder = native.cache_dir()
    folder.mkdir(parents=True)
    if problem == "writable by others":
        folder.chmod(0o777)
    else:
        uid = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    with pytest.warns(RuntimeWarning, match=problem):
        assert native.load() is False  # torch's kernels run
    assert calls() == []  # nothing built into (or loaded from) that folder


def test_a_failed_build_is_remembered_per_compiler(fake_compiler, monkeypatch):
    from nlpseq import native

    make, calls = fake_compiler
    monkeypatch.setenv("CXX", make(fail=True))
    with pytest.raises(RuntimeError, match="error: boom"):
        native.build()
    with pytest.raises(RuntimeError, match=r"error: boom.*an earlier build; delete .*\.failed"):
        native.build()
    assert len(calls()) == 1  # the compiler ran once
    monkeypatch.setenv("CXX", make(name="othercc"))  # another compiler is tried
    native.build()
    assert len(calls()) == 2


def test_a_cached_library_that_fails_to_load_is_rebuilt_once(fake_compiler, monkeypatch):
    from nlpseq import native

    make, calls = fake_compiler
    monkeypatch.setenv("CXX", make())
    native.build()
    loads = []

    def load_library(path):
        loads.append(path)
        if len(loads) == 1:
            raise OSError("invalid ELF header")

    monkeypatch.setattr(torch.ops, "load_library", load_library)
    assert native.load() is True
    assert len(calls()) == 2 and len(loads) == 2  # built again, loaded the new build


def test_a_library_that_never_loads_is_rebuilt_only_once(fake_compiler, monkeypatch):
    from nlpseq import native

    make, calls = fake_compiler
    monkeypatch.setenv("CXX", make())
    with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable"):
        assert native.load() is False  # the fake library is not an ELF file
    assert len(calls()) == 2  # the first build, and one rebuild
