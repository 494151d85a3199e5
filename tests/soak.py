"""Kill-anywhere soak: train the four demo pipelines as real processes, SIGKILL them at random
moments (a share of them inside checkpoint commits), resume, and check that nothing was lost.

    python tests/soak.py --kills 200 --seed 0          # about 20-30 minutes on one core
    python tests/soak.py --kills 3 --tasks chargen     # a smoke test

Each round trains one pipeline into a fresh run directory: a process is started (resuming
from the second start on, ``train.resume=true``), killed, started again, ... and after a
few kills left to finish. After every kill, a run directory with a committed checkpoint must
load with :func:`nlpseq.load` and evaluate, and its history must be a prefix of an
uninterrupted run's. At the end of a round the final weights (``last.safetensors`` and
``model.safetensors``) must equal the uninterrupted run's bit for bit, the history must be
the same evaluations (no duplicate, none missing) and no temporary file may be left.

Kills come in two kinds: at a random instant of the process's life (start-up, training,
evaluation, commit), or right after the k-th staging folder ``checkpoints/.NNNNNN.*.tmp``
appears, a few milliseconds later (inside a commit: while files are written and fsynced, at
the rename or at the pointer switch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NLPSEQ = [sys.executable, "-m", "nlpseq"]
COMMON = ("train.threads=1", "train.device=cpu", "train.curves=false", "train.max_minutes=0")
#: per task: the demo pipeline shortened to a few epochs with several evaluations each, and
#: the files its ``evaluate`` takes (cut to their first lines, to keep checks cheap)
TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sentiment": (("train.epochs=4", "train.evals_per_epoch=4"),
                  ("corpora/sentiment/dev.tsv",)),
    "ner": (("train.epochs=4", "train.evals_per_epoch=3"), ("corpora/ner/dev.txt",)),
    "chargen": (("train.epochs=4", "train.evals_per_epoch=3"), ("corpora/chargen/lanterns.txt",)),
    "translate": (("train.epochs=4", "train.evals_per_epoch=3", "eval.beam=2"),
                  ("corpora/translate/dev.en", "corpora/translate/dev.de")),
}
#: history fields that measure time, not training
TIMING = ("elapsed_s", "train_tokens_per_s")
#: share of kills aimed at checkpoint commits
COMMIT_SHARE = 0.4


@dataclass
class Figures:
    """What the soak counted."""

    kills: int = 0
    kills_in_commit: int = 0  # kills aimed at a checkpoint commit
    rounds: int = 0
    load_failures: int = 0
    weight_mismatches: int = 0
    history_problems: int = 0
    leftovers: int = 0  # temporary files or stale checkpoints after a finished run
    resume_failures: int = 0  # a restarted process that failed on its own
    problems: list[str] = field(default_factory=list)

    def report(self, problem: str) -> None:
        """Count a problem's text and show it at once (stderr)."""
        self.problems.append(problem)
        print(f"PROBLEM {problem}", file=sys.stderr, flush=True)

    def failed(self) -> bool:
        return bool(self.load_failures or self.weight_mismatches or self.history_problems
                    or self.leftovers or self.resume_failures)


def command(task: str, out: Path, resume: bool) -> list[str]:
    settings = [*COMMON, *TASKS[task][0], *(["train.resume=true"] if resume else [])]
    sets = [arg for s in settings for arg in ("--set", s)]
    return [*NLPSEQ, "train", f"pipelines/{task}.yaml", "--out", str(out), "--quiet", *sets]


def start(task: str, out: Path, resume: bool) -> subprocess.Popen:
    return subprocess.Popen(command(task, out, resume), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def staging(out: Path) -> set[str]:
    folder = out / "checkpoints"
    try:
        return {p.name for p in folder.iterdir() if p.name.endswith(".tmp")}
    except OSError:
        return set()


def kill_at_random(proc: subprocess.Popen, rng: random.Random, span: float) -> bool:
    """SIGKILL after a random share of ``span`` seconds; False if it finished first."""
    try:
        proc.wait(timeout=rng.uniform(0.05, span))
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def commits(out: Path) -> set[str]:
    """Numbers of the checkpoints being written or written (staging or final folders)."""
    folder = out / "checkpoints"
    try:
        return {p.name.split(".")[1] if p.name.startswith(".") else p.name
                for p in folder.iterdir()}
    except OSError:
        return set()


def kill_in_commit(proc: subprocess.Popen, out: Path, rng: random.Random) -> bool:
    """SIGKILL a few milliseconds after the staging folder of the k-th commit of this process
    appears (a commit missed between two looks moves the aim to the next one)."""
    wanted, seen = rng.randint(1, 3), commits(out)
    while proc.poll() is None:
        now = commits(out)
        new = now - seen
        if new:
            seen |= new
            wanted -= len(new)
            if wanted <= 0 and staging(out):
                time.sleep(rng.uniform(0, 0.02))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            wanted = max(wanted, 1)
        time.sleep(0.0005)
    return False


def final_files(out: Path) -> dict[str, bytes]:
    from nlpseq import checkpoint as ckpt

    folder = ckpt.RunDir(out).current()
    return {name: (folder / name).read_bytes() for name in (ckpt.LAST_WEIGHTS, ckpt.WEIGHTS)}


def evaluations(out: Path) -> list[dict]:
    from nlpseq import checkpoint as ckpt

    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in ckpt.RunDir(out).history()]


def check_loadable(task: str, out: Path, files: list[str], reference: list[dict],
                   figures: Figures) -> None:
    """After a kill: a committed checkpoint loads and evaluates; its history is a prefix of
    the uninterrupted run's."""
    import nlpseq
    from nlpseq.checkpoint import POINTER

    if not (out / POINTER).exists():
        return
    try:
        nlpseq.load(out).evaluate_files(files)
        history = evaluations(out)
    except Exception as err:  # anything at all counts as a failure to load
        figures.load_failures += 1
        figures.report(f"{task}: load/evaluate after kill {figures.kills}: {err!r}")
        return
    if history != reference[:len(history)]:
        figures.history_problems += 1
        figures.report(f"{task}: history after kill {figures.kills} is not a prefix "
                                f"(steps {[r['step'] for r in history]})")


def check_final(task: str, out: Path, reference: Path, figures: Figures) -> None:
    """A finished run: the same weights and evaluations as the uninterrupted one, no debris."""
    if final_files(out) != final_files(reference):
        figures.weight_mismatches += 1
        figures.report(f"{task}: final weights differ from the uninterrupted run")
    got, want = evaluations(out), evaluations(reference)
    steps = [r["step"] for r in got]
    if got != want or steps != sorted(set(steps)):
        figures.history_problems += 1
        figures.report(f"{task}: history steps {steps} != "
                                f"{[r['step'] for r in want]} (or values differ)")
    debris = [p.name for p in out.rglob("*.tmp")]
    if debris or len(list((out / "checkpoints").iterdir())) != 1:
        figures.leftovers += 1
        figures.report(f"{task}: left behind {debris or 'several checkpoints'}")


def cut(files: tuple[str, ...], folder: Path, lines: int = 40) -> list[str]:
    """The first ``lines`` lines of each file (whole CoNLL sentences end at a blank line)."""
    cut_files = []
    for name in files:
        text = (ROOT / name).read_text(encoding="utf-8").splitlines(keepends=True)
        end = lines
        while end < len(text) and text[end - 1].strip():
            end += 1
        target = folder / Path(name).name
        target.write_text("".join(text[:end]), encoding="utf-8")
        cut_files.append(str(target))
    return cut_files


def one_round(task: str, work: Path, reference: Path, span: float, kills: int,
              rng: random.Random, figures: Figures, files: list[str]) -> None:
    """Train ``task`` into a fresh folder through ``kills`` kills, then to the end."""
    out = work / f"{task}-round{figures.rounds}"
    wanted = evaluations(reference)
    resume, done = False, 0
    while True:
        proc = start(task, out, resume)
        resume = True
        if done < kills:
            in_commit = rng.random() < COMMIT_SHARE
            killed = (kill_in_commit(proc, out, rng) if in_commit
                      else kill_at_random(proc, rng, span))
            if killed:
                done += 1
                figures.kills += 1
                figures.kills_in_commit += in_commit
                proc.stderr.close()
                check_loadable(task, out, files, wanted, figures)
                continue
        _, err = proc.communicate()
        if proc.returncode != 0:
            figures.resume_failures += 1
            figures.report(f"{task}: exit {proc.returncode}: {err.strip()[-300:]}")
            return
        break
    check_final(task, out, reference, figures)
    shutil.rmtree(out, ignore_errors=True)


def soak(kills: int, seed: int, tasks: list[str], work: Path,
         log=print, save=lambda _figures: None) -> Figures:
    """Spread ``kills`` over ``tasks`` in rounds of 2-8 kills; returns what was counted
    (also given to ``save`` after every round). A round whose run finished before the kill
    still checks the finished run; it only adds no kill."""
    import torch

    torch.set_num_threads(1)
    rng, figures = random.Random(seed), Figures()
    references: dict[str, tuple[Path, float, list[str]]] = {}
    for task in tasks:
        out = work / f"{task}-reference"
        began = time.monotonic()
        proc = start(task, out, resume=False)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{task}: the uninterrupted run failed: {err.strip()[-500:]}")
        folder = work / f"{task}-files"
        folder.mkdir()
        references[task] = (out, time.monotonic() - began, cut(TASKS[task][1], folder))
        log(f"{task}: uninterrupted run {references[task][1]:.1f} s")
    per_task = {task: kills // len(tasks) + (i < kills % len(tasks))
                for i, task in enumerate(tasks)}
    while any(per_task.values()) and figures.rounds < 10 * kills + 10:
        for task in tasks:
            if per_task[task] == 0:
                continue
            reference, span, files = references[task]
            n = min(per_task[task], rng.randint(2, 8))
            before = figures.kills
            one_round(task, work, reference, span, n, rng, figures, files)
            per_task[task] -= figures.kills - before
            figures.rounds += 1
            save(figures)
            log(f"{task}: round {figures.rounds}, {figures.kills} kills so far, "
                f"{len(figures.problems)} problems")
    return figures


def machine() -> dict[str, str]:
    import torch

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                            capture_output=True).stdout.strip()
    return {"cpu": model, "cores": str(os.cpu_count()), "torch": torch.__version__,
            "python": platform.python_version(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help="comma-separated tasks (default: all four)")
    parser.add_argument("--json", dest="json_path", help="also write the figures here")
    parser.add_argument("--keep", help="work in this folder and keep it")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        parser.error(f"unknown tasks: {', '.join(sorted(unknown))}")
    began, where = time.monotonic(), machine()

    def report(figures: Figures, done: bool) -> str:
        text = json.dumps({
            **asdict(figures), "finished": done,
            "minutes": round((time.monotonic() - began) / 60, 1),
            "command": " ".join(["python tests/soak.py", *(argv or sys.argv[1:])]), **where,
        }, indent=1)
        if args.json_path:
            Path(args.json_path).write_text(text + "\n", encoding="utf-8")
        return text

    with tempfile.TemporaryDirectory(prefix="nlpseq-soak-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        figures = soak(args.kills, args.seed, tasks, work,
                       log=lambda m: print(m, file=sys.stderr, flush=True),
                       save=lambda f: report(f, False))
    print(report(figures, True))
    return 1 if figures.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
