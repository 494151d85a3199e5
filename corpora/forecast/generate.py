"""Writes the demo forecasting corpus: hourly series with trend, daily and weekly seasonality.

Six invented meters (``load-a`` ... ``load-f``), each a level with a linear trend, a daily
profile (period 24) that scales with the level, a weaker weekly swing and Gaussian noise.
``train.csv`` holds the first 14 days of each (336 hours), ``test.csv`` the next 24 hours:
the long layout (``series_id,timestamp,value``). Run from this folder: python generate.py.
Deterministic (fixed seed).
"""

import math
import random
from datetime import datetime, timedelta

HOURS, HORIZON = 14 * 24, 24
START = datetime(2024, 3, 4)


def series(rng: random.Random) -> list[float]:
    level = rng.uniform(50, 400)
    trend = rng.uniform(-0.15, 0.3) * level / 100  # per hour
    peak = rng.uniform(0, 24)
    daily = rng.uniform(0.2, 0.5)
    weekly = rng.uniform(0.02, 0.1)
    noise = rng.uniform(0.01, 0.03)
    values = []
    for t in range(HOURS + HORIZON):
        base = level + trend * t
        shape = (1 + daily * math.cos(2 * math.pi * (t - peak) / 24)
                 + weekly * math.sin(2 * math.pi * t / 168))
        values.append(max(base * shape * (1 + rng.gauss(0, noise)), 0.0))
    return values


def write(name: str, rows: list[tuple[str, int, float]]) -> None:
    with open(name, "w", encoding="utf-8") as out:
        out.write("series_id,timestamp,value\n")
        for sid, t, value in rows:
            out.write(f"{sid},{(START + timedelta(hours=t)).isoformat()},{value:.2f}\n")


def main() -> None:
    rng = random.Random(20)
    train, test = [], []
    for sid in (f"load-{c}" for c in "abcdef"):
        values = series(rng)
        train += [(sid, t, v) for t, v in enumerate(values[:HOURS])]
        test += [(sid, t, v) for t, v in enumerate(values[HOURS:], HOURS)]
    write("train.csv", train)
    write("test.csv", test)


if __name__ == "__main__":
    main()
