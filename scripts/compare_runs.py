"""Sentences/s of ``predict`` for several runs over one input, in alternating rounds (a shared
machine's drift reaches every run alike); medians of 5 rounds.

    python scripts/compare_runs.py --input FILE RUN_DIR [RUN_DIR ...] [--backend onnx]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import nlpseq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--input", required=True, help="input lines (as nlpseq predict)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = open(args.input, encoding="utf-8").read().splitlines()
    tasks = {run: nlpseq.load(run, backend=args.backend) for run in args.runs}
    outputs = {run: sum(1 for _ in task.predict_lines(lines)) for run, task in tasks.items()}
    rates: dict[str, list[float]] = {run: [] for run in tasks}
    for _ in range(5):
        for run, task in tasks.items():
            start = time.perf_counter()
            for _ in task.predict_lines(lines):
                pass
            rates[run].append(outputs[run] / (time.perf_counter() - start))
    for run in tasks:
        print(f"{run}\t{statistics.median(rates[run]):,.0f} sentences/s")


if __name__ == "__main__":
    main()
