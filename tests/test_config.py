"""Pipeline configuration: validation messages, environment variables, --set overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from nlpseq.config import (
    TrainConfig,
    config_reference,
    describe_range,
    key,
    load_config,
    save_config,
)
from nlpseq.errors import NlpseqError
from nlpseq.models.classifier import ClassifierConfig
from nlpseq.models.tagger import TaggerConfig
from nlpseq.tasks import TASKS, task_class

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def write(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_key_names_key_file_line_and_closest_key(tmp_path):
    path = write(tmp_path, "task: sentiment\ntrain:\n  epochs: 2\n  lr: 0.1\n  epoch: 3\n")
    with pytest.raises(NlpseqError) as err:
        load_config(path)
    assert err.value.path == str(path)
    assert err.value.line == 5
    assert str(err.value).startswith(f"{path}:5: ")
    assert "train.epoch" in str(err.value) and "train.epochs" in str(err.value)


def test_unknown_key_far_from_any_key_still_names_the_closest(tmp_path):
    path = write(tmp_path, "task: sentiment\nmodel:\n  hidden_sise: 3\n  zzzz: 1\n")
    with pytest.raises(NlpseqError, match=r"p\.yaml:3: .*model\.hidden_size"):
        load_config(path)
    path = write(tmp_path, "task: sentiment\ntrain:\n  lerning_rate: 0.1\n")
    with pytest.raises(NlpseqError) as err:
        load_config(path)
    assert err.value.line == 3
    assert "train.lerning_rate" in str(err.value)
    assert "train.lr" in str(err.value)  # the valid keys are listed when nothing is close


def test_unknown_section(tmp_path):
    path = write(tmp_path, "task: sentiment\ntrian:\n  lr: 0.1\n")
    with pytest.raises(NlpseqError, match=r"p\.yaml:2: .*'trian'.*train"):
        load_config(path)


def test_wrong_type_names_file_and_line(tmp_path):
    path = write(tmp_path, "task: sentiment\nmodel:\n  cell: lstm\n  hidden_size: big\n")
    with pytest.raises(NlpseqError) as err:
        load_config(path)
    assert (err.value.path, err.value.line) == (str(path), 4)
    assert "model.hidden_size" in str(err.value) and "integer" in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("task: sentiment\nmodel:\n  cell: cnn\n", "not one of rnn, lstm, gru"),
    ("task: sentiment\ntrain:\n  resume: maybe\n", "true/false"),
    ("task: sentiment\ntrain:\n  epochs: 2.5\n", "integer"),
    ("task: sentiment\ntrain:\n  lr: fast\n", "number"),
    ("task: parsing\n", "task must be one of"),
])
def test_bad_values(tmp_path, text, message):
    with pytest.raises(NlpseqError, match=message):
        load_config(write(tmp_path, text))


def test_lazy_embedding_updates_need_adam_and_word_embeddings(tmp_path):
    lazy = "embeddings:\n  lazy_updates: true\n"
    assert load_config(write(tmp_path, "task: ner\n" + lazy)).embeddings.lazy_updates
    path = write(tmp_path, "task: sentiment\n" + lazy + "train:\n  optimizer: sgd\n")
    with pytest.raises(NlpseqError, match="lazy_updates needs train.optimizer adam") as err:
        load_config(path)
    assert (err.value.path, err.value.line) == (str(path), 3)
    with pytest.raises(NlpseqError, match="does not apply to the chargen task") as err:
        load_config(write(tmp_path, "task: chargen\n" + lazy))
    with pytest.raises(NlpseqError, match="--set") as err:
        load_config(write(tmp_path, "task: translate\n"), ["embeddings.lazy_updates=true"])
    assert err.value.path is None


def test_word2vec_text_needs_word2vec_vectors(tmp_path):
    text = "embeddings:\n  word2vec_text: more.tsv\n"
    path = write(tmp_path, "task: sentiment\n" + text)
    with pytest.raises(NlpseqError, match="word2vec_text needs embeddings.word2vec_dim") as err:
        load_config(path)
    assert (err.value.path, err.value.line) == (str(path), 3)
    config = load_config(path, ["embeddings.word2vec_dim=20"])
    assert (config.embeddings.word2vec_dim, config.embeddings.word2vec_text) == (20, "more.tsv")
    with pytest.raises(NlpseqError, match="does not apply to the ner task"):
        load_config(write(tmp_path, "task: ner\nembeddings:\n  word2vec_dim: 20\n"))


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "task: sentiment\ntrain:\n  lr: [1\n")
    with pytest.raises(NlpseqError, match="invalid YAML") as err:
        load_config(path)
    assert err.value.path == str(path) and err.value.line is not None


def test_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("NLPSEQ_TEST_DIR", "/data/x")
    monkeypatch.delenv("NLPSEQ_TEST_UNSET", raising=False)
    path = write(tmp_path, (
        "task: sentiment\n"
        "data:\n"
        "  train: ${NLPSEQ_TEST_DIR}/train.tsv\n"
        "  dev: ${NLPSEQ_TEST_UNSET:-/fallback}/dev.tsv\n"
        "train:\n"
        "  epochs: ${NLPSEQ_TEST_EPOCHS:-7}\n"
    ))
    config = load_config(path)
    assert config.data.train == "/data/x/train.tsv"
    assert config.data.dev == "/fallback/dev.tsv"
    assert config.train.epochs == 7  # a string from the default, typed by the field

    monkeypatch.setenv("NLPSEQ_TEST_UNSET", "/set")
    assert load_config(path).data.dev == "/set/dev.tsv"

    bad = write(tmp_path, "task: sentiment\ndata:\n  train: ${NLPSEQ_TEST_NOPE}/t.tsv\n")
    monkeypatch.delenv("NLPSEQ_TEST_NOPE", raising=False)
    with pytest.raises(NlpseqError, match="NLPSEQ_TEST_NOPE") as err:
        load_config(bad)
    assert err.value.line == 3


def test_overrides_are_typed_by_field(tmp_path):
    path = write(tmp_path, "task: sentiment\ntrain:\n  epochs: 2\n  lr: 0.1\n")
    config = load_config(path, [
        "train.epochs=5", "train.lr=1e-2", "train.clip=1", "train.resume=true",
        "model.cell=gru", "model.bidirectional=false", "data.text_column=123", "train.lr=0.02",
    ])
    assert config.train.epochs == 5 and type(config.train.epochs) is int
    assert config.train.lr == 0.02  # the last --set wins
    assert config.train.clip == 1.0 and type(config.train.clip) is float
    assert config.train.resume is True
    assert config.model.cell == "gru" and config.model.bidirectional is False
    assert config.data.text_column == "123"
    assert load_config(path, ["train.lr=1e-3"]).train.lr == 1e-3  # YAML 1.1 reads this as str


@pytest.mark.parametrize("override, message", [
    ("train.epochs=2.5", "train.epochs: expected an integer"),
    ("train.resume=maybe", "train.resume: expected true/false"),
    ("model.cell=cnn", "model.cell: 'cnn' is not one of"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("train.epoch=3", r"--set train.epoch: unknown key; did you mean train.epochs\?"),
    ("trian.lr=1", "unknown section 'trian'"),
    ("train.lr", "expected section.key=value"),
    ("task=ner", "expected section.key=value"),
])
def test_bad_overrides(tmp_path, override, message):
    path = write(tmp_path, "task: sentiment\ntrain:\n  epochs: 2\n  lr: 0.1\n")
    with pytest.raises(NlpseqError, match=message) as err:
        load_config(path, [override])
    # The error is in the --set value, not at the file line of the key it overrides.
    assert err.value.line is None


def test_sections_are_frozen(tmp_path):
    config = load_config(write(tmp_path, "task: sentiment\n"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.task = "ner"
    assert dataclasses.replace(config.train, lr=1.0).lr == 1.0


def test_defaults_and_model_section_per_task(tmp_path):
    config = load_config(write(tmp_path, "task: sentiment\n"))
    assert isinstance(config.model, ClassifierConfig) and config.data.format == "tsv"
    ner = load_config(write(tmp_path, "task: ner\n"))
    assert isinstance(ner.model, TaggerConfig) and ner.data.format == "conll"
    assert ner.model.embedding_dropout == 0.0  # one default, the declaration's
    assert config.source == str(tmp_path / "p.yaml")
    assert "${" not in config.embeddings.cache_dir  # defaults expand ${VAR:-default} too


def test_saved_config_loads_back_equal(tmp_path):
    config = load_config(write(tmp_path, "task: sentiment\ntrain:\n  lr: 0.5\n"),
                         ["model.pooling=attention"])
    save_config(config, tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert again.to_dict() == config.to_dict()


def test_missing_pipeline_file(tmp_path):
    with pytest.raises(NlpseqError, match="not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("line, message", [
    ("  batch_size: 0", "train.batch_size: must be >= 1, got 0"),
    ("  epochs: 0", "train.epochs: must be >= 1, got 0"),
    ("  lr: -1", r"train.lr: must be > 0, got -1.0"),
    ("  lr: 0", r"train.lr: must be > 0, got 0.0"),
    ("  schedule_factor: 1", r"train.schedule_factor: must be in \(0, 1\), got 1.0"),
    ("  patience: -2", "train.patience: must be >= 0, got -2"),
])
def test_values_out_of_range_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, f"task: sentiment\ntrain:\n  seed: 1\n{line}\n")
    with pytest.raises(NlpseqError, match=f"^{path}:4: {message}$"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("model.dropout=1.5", r"--set model.dropout: must be in \[0, 1\), got 1.5"),
    ("model.dropout=1", r"--set model.dropout: must be in \[0, 1\), got 1.0"),
    ("model.hidden_size=0", "--set model.hidden_size: must be >= 1, got 0"),
    ("model.adversarial=-0.5", "--set model.adversarial: must be >= 0, got -0.5"),
])
def test_overrides_out_of_range(tmp_path, override, message):
    path = write(tmp_path, "task: sentiment\n")
    with pytest.raises(NlpseqError, match=f"^{message}$"):
        load_config(path, [override])


def test_values_at_the_edges_of_their_range_are_accepted(tmp_path):
    path = write(tmp_path, "task: translate\nmodel:\n  dropout: 0\n  teacher_forcing: 1\n"
                           "train:\n  patience: 0\n  clip: 0\n  epochs: 1\n")
    config = load_config(path)
    assert config.model.teacher_forcing == 1.0 and config.train.clip == 0.0


def test_every_key_is_declared_with_a_meaning_and_a_default_in_its_range():
    from nlpseq import config as c

    sections = [*c.SECTIONS.values(), *(task_class(t).ModelConfig for t in TASKS)]
    names = {f.name for cls in sections for f in dataclasses.fields(cls)}
    assert set(c.ALIASES.values()) <= names
    for cls in sections:
        for f in dataclasses.fields(cls):
            assert f.metadata["help"] and "\n" not in f.metadata["help"], f.name
            assert f.metadata["tasks"] == c.ALL or set(f.metadata["tasks"]) <= set(TASKS)
            c._check_range(f, f.default, f.name, None, None)


def test_key_declares_default_range_meaning_and_tasks():
    f = key(3, low=1, high=5, high_open=True, help="how many", tasks=("ner",))
    assert f.default == 3
    assert f.metadata == {"low": 1, "high": 5, "low_open": False, "high_open": True,
                          "help": "how many", "tasks": ("ner",)}
    declared = {x.name: x for x in dataclasses.fields(TrainConfig)}
    assert describe_range(declared["lr"]) == "> 0"
    assert describe_range(declared["schedule_factor"]) == "in (0, 1)"
    assert describe_range(declared["optimizer"]) == ""


@pytest.mark.parametrize("text, message", [
    ("task: sentiment\ndata:\n  train: t.tsv\n  tag_scheme: iob2\n",
     r"p\.yaml:4: data\.tag_scheme: does not apply to the sentiment task \(only ner\)$"),
    ("task: ner\ndata:\n  text_column: body\n",
     r"p\.yaml:3: data\.text_column: does not apply to the ner task \(only sentiment\)$"),
    ("task: chargen\neval:\n  beam: 2\n", r"p\.yaml:3: eval\.beam: .* chargen .*translate"),
])
def test_a_key_of_another_task_is_refused_with_file_and_line(tmp_path, text, message):
    with pytest.raises(NlpseqError, match=message):
        load_config(write(tmp_path, text))


def test_a_key_of_another_task_given_with_set_is_refused(tmp_path):
    path = write(tmp_path, "task: sentiment\n")
    with pytest.raises(NlpseqError, match=r"^--set data\.tag_column: does not apply to the "
                                          r"sentiment task \(only ner\)$"):
        load_config(path, ["data.tag_column=2"])
    # defaults of keys that do not apply are fine, and are not written back
    config = load_config(path)
    assert "tag_column" not in config.to_dict()["data"]
    assert "text_column" in config.to_dict()["data"]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_infinity_are_refused(tmp_path, value):
    path = write(tmp_path, f"task: sentiment\ntrain:\n  max_minutes: {value}\n")
    with pytest.raises(NlpseqError, match=rf"^{path}:3: train.max_minutes: must be a finite"):
        load_config(path)
    with pytest.raises(NlpseqError, match="^--set train.lr: must be a finite number"):
        load_config(write(tmp_path, "task: sentiment\n"), ["train.lr=nan"])


@pytest.mark.parametrize("pipeline", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_loads_and_round_trips(tmp_path, monkeypatch, pipeline):
    monkeypatch.setenv("NLPSEQ_CORPORA", "/corpora")
    config = load_config(pipeline)
    assert isinstance(config.model, task_class(config.task).ModelConfig)
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml").to_dict() == config.to_dict()


def test_the_checked_in_key_reference_is_current():
    """docs/config.md is generated: ``python -m nlpseq.config > docs/config.md``."""
    written = (PIPELINES.parent / "docs" / "config.md").read_text(encoding="utf-8")
    assert written == config_reference(), "regenerate: python -m nlpseq.config > docs/config.md"


def test_the_reference_lists_every_key_of_every_section():
    text = config_reference()
    for name in TASKS:
        model = task_class(name).ModelConfig
        assert f"## model ({name}: `{model.__name__}`)" in text
        for f in dataclasses.fields(model):
            assert f"| `{f.name}` |" in text
    assert "| `tag_scheme` | one of `iob1`, `iob2`, `bioes` | `iob1` |  | ner |" in text
    assert "| `lr` | float | `0.001` | > 0 | all | learning rate |" in text


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """A model of a task that exists only in this test."""

    width: int = key(4, low=2, help="toy width")
    mode: Literal["a", "b"] = key("a", help="toy mode")


class ToyTask:
    ModelConfig = ToyConfig
    formats = ("toy", "text")


def test_a_task_added_to_the_table_loads_with_its_own_model_keys(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "toy", ToyTask)
    path = write(tmp_path, "task: toy\ndata:\n  train: t.txt\nmodel:\n  width: 9\n"
                           "train:\n  lr: 0.5\n")
    config = load_config(path, ["model.mode=b"])
    assert config.task == "toy" and config.model == ToyConfig(width=9, mode="b")
    assert config.data.format == "toy" and config.train.lr == 0.5
    assert "## model (toy: `ToyConfig`)" in config_reference()
    with pytest.raises(NlpseqError, match=r"p\.yaml:5: model\.width: must be >= 2, got 1"):
        load_config(write(tmp_path, "task: toy\nmodel:\n  mode: a\n\n  width: 1\n"))
    with pytest.raises(NlpseqError, match=r"unknown key model\.widht; did you mean model\.width"):
        load_config(write(tmp_path, "task: toy\nmodel:\n  widht: 3\n"))
    with pytest.raises(NlpseqError, match="data.tag_scheme: does not apply to the toy task"):
        load_config(write(tmp_path, "task: toy\ndata:\n  tag_scheme: iob2\n"))
    with pytest.raises(NlpseqError, match="the toy task reads toy or text, not tsv"):
        load_config(write(tmp_path, "task: toy\n"), ["data.format=tsv"])


def test_a_key_written_twice_is_an_error(tmp_path):
    path = write(tmp_path, "task: sentiment\ntrain:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n")
    twice = rf"^{path}:5: train.lr is written twice \(first on line 3\)$"
    with pytest.raises(NlpseqError, match=twice):
        load_config(path)
    path = write(tmp_path, "task: sentiment\ntrain:\n  lr: 0.1\ntask: ner\n")
    with pytest.raises(NlpseqError, match=rf"^{path}:4: task is written twice"):
        load_config(path)


@pytest.mark.parametrize("key, wanted", [
    ("learning_rate", "train.lr"), ("learning_rat", "train.lr"), ("num_epochs", "train.epochs"),
])
def test_names_from_other_toolkits_point_to_ours(tmp_path, key, wanted):
    path = write(tmp_path, f"task: sentiment\ntrain:\n  {key}: 3\n")
    with pytest.raises(NlpseqError, match=rf"did you mean {wanted}\?"):
        load_config(path)


def test_a_data_format_the_task_cannot_read(tmp_path):
    path = write(tmp_path, "task: chargen\ndata:\n  format: hub\n")
    with pytest.raises(NlpseqError, match=rf"^{path}:3: data.format: the chargen task reads "
                                          "text, not hub$"):
        load_config(path)
    with pytest.raises(NlpseqError, match="^--set data.format: the ner task reads conll, not tsv"):
        load_config(write(tmp_path, "task: ner\n"), ["data.format=tsv"])
