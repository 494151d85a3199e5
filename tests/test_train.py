"""The trainer: determinism, resume, NaN, time budget, early stopping, atomic run files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nlpseq import checkpoint as ckpt
from nlpseq import native
from nlpseq.batching import TokenStore
from nlpseq.config import load_config
from nlpseq.errors import NlpseqError
from nlpseq.models.classifier import ClassifierConfig, TextClassifier
from nlpseq.tasks.sentiment import SentimentTask
from nlpseq.trainer import clip_gradients, train


def run(pipeline, out, *overrides):
    return train(load_config(pipeline, list(overrides)), out, log=lambda _m: None,
                 progress=False)


def assert_same_weights(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_deterministic_with_seed(pipeline, tmp_path):
    first = run(pipeline, tmp_path / "a", "train.epochs=2")
    run(pipeline, tmp_path / "b", "train.epochs=2")
    assert_same_weights(ckpt.RunDir(tmp_path / "a").file(ckpt.LAST_WEIGHTS),
                        ckpt.RunDir(tmp_path / "b").file(ckpt.LAST_WEIGHTS))
    run(pipeline, tmp_path / "c", "train.epochs=2", "train.seed=8")
    other = load_file(str(ckpt.RunDir(tmp_path / "c").file(ckpt.LAST_WEIGHTS)))
    assert not torch.equal(other["output.weight"],
                           first.task.model.state_dict()["output.weight"])


def test_refuses_to_overwrite_a_run(pipeline, tmp_path):
    run(pipeline, tmp_path / "run", "train.epochs=1")
    with pytest.raises(NlpseqError, match="already holds a model"):
        run(pipeline, tmp_path / "run", "train.epochs=1")


@pytest.mark.parametrize("ema, lazy", [("0", "false"), ("0.9", "false"), ("0", "true")])
def test_resume_with_more_epochs_continues(pipeline, tmp_path, ema, lazy):
    options = [f"train.ema={ema}", f"embeddings.lazy_updates={lazy}"]
    straight = run(pipeline, tmp_path / "straight", "train.epochs=4", *options)
    run(pipeline, tmp_path / "resumed", "train.epochs=2", *options)
    assert len(ckpt.read_jsonl(ckpt.RunDir(tmp_path / "resumed").file(ckpt.HISTORY))) == 2
    resumed = run(pipeline, tmp_path / "resumed", "train.epochs=4", "train.resume=true",
                  *options)
    history = ckpt.read_jsonl(ckpt.RunDir(tmp_path / "resumed").file(ckpt.HISTORY))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    # Weights, optimizer moments and RNG were restored: the same as training 4 epochs at once.
    assert_same_weights(ckpt.RunDir(tmp_path / "straight").file(ckpt.LAST_WEIGHTS),
                        ckpt.RunDir(tmp_path / "resumed").file(ckpt.LAST_WEIGHTS))
    for a, b in zip(straight.history, history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert_same_weights(ckpt.RunDir(tmp_path / "straight").file(ckpt.WEIGHTS),
                        ckpt.RunDir(tmp_path / "resumed").file(ckpt.WEIGHTS))
    # Resuming a run that has done all its epochs does nothing.
    again = run(pipeline, tmp_path / "resumed", "train.epochs=4", "train.resume=true")
    assert len(again.history) == 4
    assert_same_weights(ckpt.RunDir(tmp_path / "straight").file(ckpt.LAST_WEIGHTS),
                        ckpt.RunDir(tmp_path / "resumed").file(ckpt.LAST_WEIGHTS))


def test_resume_after_a_crash(pipeline, tmp_path, monkeypatch):
    run(pipeline, tmp_path / "straight", "train.epochs=3")
    calls = {"n": 0}
    forward = TextClassifier.forward

    def crash_in_epoch_2(self, batch, carry=None):
        calls["n"] += 1
        if calls["n"] == 9:  # 6 batches per epoch: the 3rd batch of epoch 2
            raise KeyboardInterrupt
        return forward(self, batch, carry)

    monkeypatch.setattr(TextClassifier, "forward", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, tmp_path / "crashed", "train.epochs=3")
    monkeypatch.setattr(TextClassifier, "forward", forward)
    assert len(ckpt.read_jsonl(ckpt.RunDir(tmp_path / "crashed").file(ckpt.HISTORY))) == 1
    assert not list((tmp_path / "crashed").rglob("*.tmp"))
    run(pipeline, tmp_path / "crashed", "train.epochs=3", "train.resume=true")
    history = ckpt.read_jsonl(ckpt.RunDir(tmp_path / "crashed").file(ckpt.HISTORY))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert_same_weights(ckpt.RunDir(tmp_path / "straight").file(ckpt.LAST_WEIGHTS),
                        ckpt.RunDir(tmp_path / "crashed").file(ckpt.LAST_WEIGHTS))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(pipeline, tmp_path, monkeypatch):
    out = tmp_path / "run"
    saved = {}
    calls = {"n": 0}
    forward = TextClassifier.forward

    def nan_in_epoch_2(self, batch, carry=None):
        calls["n"] += 1
        if calls["n"] == 7:  # first batch of epoch 2: remember the checkpoint of epoch 1
            saved.update({name: ckpt.RunDir(out).file(name).read_bytes()
                          for name in (ckpt.WEIGHTS, ckpt.METRICS, ckpt.HISTORY)})
        loss, count, carry = forward(self, batch, carry)
        if calls["n"] >= 9:
            loss = loss * float("nan")
        return loss, count, carry

    monkeypatch.setattr(TextClassifier, "forward", nan_in_epoch_2)
    with pytest.raises(NlpseqError, match="loss is nan.*epoch 2") as err:
        run(pipeline, out, "train.epochs=3")
    assert str(out) in str(err.value)
    assert saved and all(ckpt.RunDir(out).file(name).read_bytes() == data
                         for name, data in saved.items())
    monkeypatch.setattr(TextClassifier, "forward", forward)
    import nlpseq

    predictions = nlpseq.load(out).predict(["the film is good"])
    assert all(p == p for p in predictions[0]["probabilities"].values())  # not NaN


def test_max_minutes_stops_within_budget(pipeline, tmp_path, monkeypatch):
    """The trainer's clock is fake, 0.05 s further on at each reading: the budget runs out
    after a fixed amount of work, whatever the machine's speed."""
    import types

    from nlpseq import trainer

    clock = iter(0.05 * i for i in range(1, 10**7))
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    budget = 3.0  # fake seconds: a few epochs of 6 batches; 200 epochs would take far longer
    result = run(pipeline, tmp_path / "run", "train.epochs=200",
                 f"train.max_minutes={budget / 60}")
    assert result.metrics["stopped"] == "time budget"
    state = ckpt.read_json(ckpt.RunDir(tmp_path / "run").file(ckpt.TRAINER_STATE))
    assert 0 < state["elapsed"] <= budget
    assert (ckpt.RunDir(tmp_path / "run").file(ckpt.WEIGHTS)).is_file()
    assert len(result.history) >= 1
    assert result.metrics["best_epoch"] == max(
        result.history, key=lambda h: (h["accuracy"], -h["epoch"]))["epoch"]


def test_early_stopping_and_plateau_schedule(pipeline, tmp_path, monkeypatch):
    """A dev score that never improves: the lr halves after ``schedule_patience`` evaluations
    without improvement, and training stops after ``patience``."""
    monkeypatch.setattr(SentimentTask, "evaluate",
                        lambda self, model: {"accuracy": 50.0, "macro_f1": 50.0, "loss": 1.0})
    result = run(pipeline, tmp_path / "run", "train.epochs=50", "train.patience=3",
                 "train.schedule=plateau", "train.schedule_patience=1",
                 "train.schedule_factor=0.5")
    assert result.metrics["stopped"] == "early stopping"
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert [h["lr"] for h in result.history] == pytest.approx([0.05, 0.05, 0.05, 0.025])
    assert result.metrics["best_epoch"] == 1


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decaying_schedules_lower_the_lr(pipeline, tmp_path, schedule):
    result = run(pipeline, tmp_path / "run", "train.epochs=3", f"train.schedule={schedule}",
                 "train.warmup_steps=2")
    lrs = [h["lr"] for h in result.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.05 * 0.5


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_other_optimizers(pipeline, tmp_path, optimizer):
    result = run(pipeline, tmp_path / "run", "train.epochs=1", f"train.optimizer={optimizer}")
    assert len(result.history) == 1


def test_evals_per_epoch(pipeline, tmp_path):
    result = run(pipeline, tmp_path / "run", "train.epochs=2", "train.evals_per_epoch=3")
    assert [h["epoch"] for h in result.history] == [1, 1, 1, 2, 2, 2]
    assert [h["step"] for h in result.history] == [2, 4, 6, 8, 10, 12]


def test_unknown_eval_metric(pipeline, tmp_path):
    with pytest.raises(NlpseqError, match="eval.metric 'bleu'"):
        run(pipeline, tmp_path / "run", "eval.metric=bleu")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    ckpt.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), ckpt.atomic_path(target) as tmp:
        with open(tmp, "w") as handle:
            handle.write('{"v": ')  # half-written when the run dies
        raise RuntimeError("killed")
    assert ckpt.read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_weights_and_optimizer_round_trip(tmp_path):
    config = ClassifierConfig(embedding_dim=4, hidden_size=3)
    torch.manual_seed(0)
    model = TextClassifier(config, 10, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    batch = TokenStore([[4, 5], [6]]).collate([0, 1], torch.tensor([0, 1]))
    loss, _, _ = model(batch)
    loss.backward()
    optimizer.step()
    ckpt.save_weights(model, tmp_path / "w.safetensors")
    extra = {"rng": torch.get_rng_state(), "0": torch.arange(3.0)}
    tensors, rest = ckpt.optimizer_tensors(optimizer, extra)
    ckpt.tensors_writer(tensors)(tmp_path / "o.safetensors")
    torch.manual_seed(1)
    other = TextClassifier(config, 10, 2)
    other_opt = torch.optim.Adam(other.parameters(), lr=0.1)
    ckpt.load_weights(other, tmp_path / "w.safetensors")
    extra_back = ckpt.load_optimizer(other_opt, tmp_path / "o.safetensors", rest)
    assert extra_back.keys() == extra.keys()
    assert all(torch.equal(extra_back[k], extra[k]) for k in extra)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), other.parameters()):
        sa, sb = optimizer.state[p], other_opt.state[q]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["step"], sb["step"])
    wrong = TextClassifier(config, 10, 3)
    with pytest.raises(NlpseqError, match="do not match"):
        ckpt.load_weights(wrong, tmp_path / "w.safetensors")


def test_slow_or_ignored_settings_are_reported(pipeline, tmp_path, monkeypatch):
    import nlpseq.trainer as trainer

    cpu = torch.device("cpu")
    assert trainer.slow_path_warnings(load_config(pipeline), cpu) == []
    ignored = trainer.slow_path_warnings(load_config(pipeline, ["train.bf16=true"]), cpu)
    assert len(ignored) == 1 and "CUDA only" in ignored[0]
    repo = Path(__file__).resolve().parent.parent
    chargen = load_config(repo / "pipelines" / "chargen.yaml", ["model.bf16=true"])
    monkeypatch.setitem(native._state, "bf16", False)
    assert "runs float32" in trainer.slow_path_warnings(chargen, cpu)[0]
    monkeypatch.setitem(native._state, "bf16", True)
    assert trainer.slow_path_warnings(chargen, cpu) == []
    messages = []
    train(load_config(pipeline, ["train.bf16=true", "train.epochs=1"]), tmp_path / "run",
          log=messages.append, progress=False)
    assert any(m.startswith("warning: train.bf16 applies on CUDA only") for m in messages)


@pytest.mark.parametrize("clip", [0.05, 100.0])
def test_clip_gradients_matches_torch(clip):
    def grads_after(clipper):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        model(torch.randn(5, 4)).pow(2).sum().backward()
        clipper(model)
        return [p.grad.clone() for p in model.parameters()]

    ours = grads_after(lambda m: clip_gradients(m, clip))
    theirs = grads_after(lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), clip))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in ours]))
    assert float(norm) == pytest.approx(min(clip, float(norm)), rel=1e-5)
