"""Other processes' CPU use: the arithmetic, a real busy neighbour, the trainer's warning."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from nlpseq import cpuload
from nlpseq.config import load_config
from nlpseq.cpuload import OtherLoad, contention_warning
from nlpseq.trainer import train


def test_cores_is_busy_time_not_ours_over_wall_time(monkeypatch):
    samples = iter([(100.0, 10.0, 50.0), (103.0, 11.0, 52.0), (103.0, 11.0, 52.0)])
    monkeypatch.setattr(cpuload, "_sample", lambda: next(samples))
    load = OtherLoad()
    assert load.cores() == pytest.approx((3.0 - 1.0) / 2.0)
    assert load.cores() is None  # no time passed


def test_no_proc_stat_means_no_figure(monkeypatch):
    monkeypatch.setattr(cpuload, "_sample", lambda: None)
    assert OtherLoad().cores() is None


@pytest.mark.parametrize("others, threads, cores, warns", [
    (1.0, 2, 2, True), (0.4, 2, 2, False), (1.0, 1, 2, False), (1.0, 2, 8, False),
    (None, 2, 2, False), (0.6, 4, 4, True),
])
def test_warning_only_when_threads_and_neighbours_want_more_than_the_cores(
        others, threads, cores, warns):
    message = contention_warning(others, threads, cores)
    assert (message is not None) == warns
    if warns:
        assert f"{others:.1f} of {cores} CPU cores" in message and "train.threads" in message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_a_busy_neighbour_is_seen():
    load = OtherLoad()
    spin = "import time\nend = time.time() + 1.0\nwhile time.time() < end: pass"
    neighbour = subprocess.Popen([sys.executable, "-c", spin])
    neighbour.wait()
    time.sleep(0.05)
    assert load.cores() > 0.3  # about one core for the second it ran


def test_training_beside_a_busy_neighbour_says_so_once(pipeline, tmp_path, monkeypatch):
    import nlpseq.trainer as trainer

    class Busy:
        def cores(self) -> float:
            return 1.2

    monkeypatch.setattr(trainer, "OtherLoad", Busy)
    monkeypatch.setattr(trainer, "usable_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    messages: list[str] = []
    train(load_config(pipeline, ["train.epochs=3", "train.patience=0"]), tmp_path / "run",
          log=messages.append, progress=False)
    warnings = [m for m in messages if m.startswith("warning: other processes kept 1.2 of 2")]
    assert len(warnings) == 1
