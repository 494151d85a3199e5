"""Training throughput of two revisions of nlpseq, side by side: ``nlpseq bench`` and a short
budgeted training of each benchmark pipeline, the two revisions alternating in each round so
that a shared machine's drift reaches both alike; medians over the rounds.

    python scripts/compare_revisions.py OLD_REV [NEW_REV] [--seconds 45] [--rounds 2]
        [--pipelines NAME ...]

NEW_REV defaults to the working tree. Each revision runs from its own git worktree (through
PYTHONPATH, with this environment's packages); the pipelines are those both revisions ship.
Needs NLPSEQ_CORPORA. Prints one table: training tokens/s per pipeline and revision, the
ratio new/old, and ``nlpseq bench``'s training and inference figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Evaluations per epoch that give each pipeline an evaluation (which logs the training speed)
# within a short budget; the budget's end evaluates too.
PIPELINES = {
    "sentiment-sst2": 4, "sentiment-imdb": 8, "ner-conll2003": 1,
    "chargen-shakespeare": 2, "translate-multi30k": 8, "forecast-m4-hourly": 1,
}


def worktree(rev: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev],
                   check=True, capture_output=True)
    return into


def nlpseq(source: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(source)}
    return subprocess.run([sys.executable, "-m", "nlpseq", *args], cwd=source, env=env,
                          capture_output=True, text=True, check=True)


def training_speed(source: Path, pipeline: str, evals: int, seconds: float, out: Path) -> float:
    nlpseq(source, "train", f"pipelines/{pipeline}.yaml", "--out", str(out), "--quiet",
           "--set", f"train.max_minutes={seconds / 60}", "--set", f"train.evals_per_epoch={evals}",
           "--set", "train.curves=false")
    pointer = json.loads((out / "checkpoint.json").read_text())
    history = (out / "checkpoints" / pointer["checkpoint"] / "history.jsonl").read_text()
    speeds = [json.loads(line)["train_tokens_per_s"] for line in history.splitlines()]
    return statistics.median(speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default="")
    parser.add_argument("--seconds", type=float, default=45.0, help="training budget per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pipelines", nargs="+", choices=sorted(PIPELINES),
                        default=list(PIPELINES), help="these pipelines only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sides = {"old": worktree(args.old, tmp_path / "old"),
                 "new": worktree(args.new, tmp_path / "new") if args.new else ROOT}
        try:
            run(sides, args, tmp_path)
        finally:
            for path in sides.values():
                if path != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    str(path)], capture_output=True)


def run(sides: dict[str, Path], args: argparse.Namespace, tmp: Path) -> None:
    shipped = [p for p in args.pipelines
               if all((path / "pipelines" / f"{p}.yaml").is_file() for path in sides.values())]
    speeds: dict[tuple[str, str], list[float]] = {}
    bench: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        for pipeline in shipped:
            for side, path in sides.items():
                out = tmp / f"{side}-{pipeline}-{round_}"
                speed = training_speed(path, pipeline, PIPELINES[pipeline], args.seconds, out)
                speeds.setdefault((pipeline, side), []).append(speed)
        for side, path in sides.items():
            done = nlpseq(path, "bench", "--json", "--seconds", "20")
            bench[side].append(json.loads(done.stdout))
    print("| pipeline | old tokens/s | new tokens/s | new / old |")
    print("| --- | --- | --- | --- |")
    for pipeline in shipped:
        old, new = (statistics.median(speeds[pipeline, side]) for side in ("old", "new"))
        print(f"| {pipeline} | {old:,.0f} | {new:,.0f} | {new / old:.2f} |")
    for key in ("train_tokens_per_s", "inference_sentences_per_s"):
        old, new = (statistics.median(b[key] for b in bench[side]) for side in ("old", "new"))
        print(f"| bench {key} | {old:,.0f} | {new:,.0f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
