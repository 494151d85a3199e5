"""Writes the demo sentiment corpus (train.tsv, dev.tsv): template sentences about films.

Run from this folder: python generate.py. Deterministic (fixed seed).
"""

import random

POSITIVE = ["good", "great", "wonderful", "moving", "gripping", "funny", "charming", "brilliant", "warm",
            "clever", "beautiful", "delightful", "fresh", "powerful", "touching", "smart"]
NEGATIVE = ["bad", "poor", "dull", "boring", "awful", "tedious", "clumsy", "bland", "lifeless", "silly",
            "predictable", "messy", "flat", "tiresome", "forgettable", "shallow"]
SUBJECTS = ["the film", "this movie", "the story", "the acting", "the script", "the ending",
            "the cast", "the direction", "the dialogue", "the soundtrack", "its humour",
            "the plot", "every scene", "the lead performance"]
INTENSIFIERS = ["", "", "very ", "truly ", "rather ", "remarkably ", "simply "]
TEMPLATES = [
    "{s} is {i}{a}",
    "{s} feels {i}{a} from start to finish",
    "i found {s} {i}{a}",
    "{s} is {i}{a} and {i2}{a2}",
    "what a {a} experience , {s} is {i}{a2}",
]


def sentence(rng: random.Random, label: int) -> str:
    negate = rng.random() < 0.2
    pool = POSITIVE if (label == 1) != negate else NEGATIVE
    a, a2 = rng.choice(pool), rng.choice(pool)
    text = rng.choice(TEMPLATES).format(
        s=rng.choice(SUBJECTS), i=rng.choice(INTENSIFIERS), i2=rng.choice(INTENSIFIERS),
        a=a, a2=a2,
    )
    if negate:
        form = rng.random()
        if form < 0.3:  # the short verdicts reviews end on: "not bad at all"
            return f"{rng.choice(['', 'honestly , ', 'overall '])}not {a} at all"
        text = text.replace(" is ", " is not ", 1) if " is " in text else "not " + text
    return text


def write(path: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("label\ttext\n")
        for _ in range(n):
            label = rng.randint(0, 1)
            handle.write(f"{label}\t{sentence(rng, label)}\n")


if __name__ == "__main__":
    write("train.tsv", 1200, 1)
    write("dev.tsv", 200, 2)
