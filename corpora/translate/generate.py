"""Writes the demo English->German corpus (train.en/.de, dev.en/.de): template sentences.

Run from this folder: python generate.py. Deterministic (fixed seed); every pair is distinct
and no dev pair occurs in train.
"""

import random

# (English, German nominative singular, German nominative plural, English plural)
NOUNS = [
    ("man", "der Mann", "Männer", "men"),
    ("woman", "die Frau", "Frauen", "women"),
    ("child", "das Kind", "Kinder", "children"),
    ("dog", "der Hund", "Hunde", "dogs"),
    ("cat", "die Katze", "Katzen", "cats"),
    ("girl", "das Mädchen", "Mädchen", "girls"),
    ("boy", "der Junge", "Jungen", "boys"),
]
# (English -ing form, German 3rd person singular, German plural)
VERBS = [
    ("running", "läuft", "laufen"),
    ("sleeping", "schläft", "schlafen"),
    ("eating", "isst", "essen"),
    ("playing", "spielt", "spielen"),
    ("swimming", "schwimmt", "schwimmen"),
    ("singing", "singt", "singen"),
    ("waiting", "wartet", "warten"),
]
PLACES = [
    ("in the park", "im Park"),
    ("in the garden", "im Garten"),
    ("on the beach", "am Strand"),
    ("in the house", "im Haus"),
    ("on the street", "auf der Straße"),
    ("at home", "zu Hause"),
]
# After a definite article in the nominative the German adjective ends in -e for every gender.
ADJECTIVES = [("big", "große"), ("small", "kleine"), ("old", "alte"), ("young", "junge")]
NUMBERS = [("Two", "Zwei"), ("Three", "Drei"), ("Many", "Viele")]


def capital(text: str) -> str:
    return text[0].upper() + text[1:]


def all_pairs() -> list[tuple[str, str]]:
    pairs = []
    for noun, noun_de, plural_de, plural in NOUNS:
        article, word = noun_de.split(" ")
        for verb, verb_de, verb_pl in VERBS:
            pairs.append((f"The {noun} is {verb}.", f"{capital(noun_de)} {verb_de}."))
            for place, place_de in PLACES:
                pairs.append((f"The {noun} is {verb} {place}.",
                              f"{capital(noun_de)} {verb_de} {place_de}."))
            for adjective, adjective_de in ADJECTIVES:
                pairs.append((f"The {adjective} {noun} is {verb}.",
                              f"{capital(article)} {adjective_de} {word} {verb_de}."))
            for number, number_de in NUMBERS:
                pairs.append((f"{number} {plural} are {verb}.",
                              f"{number_de} {plural_de} {verb_pl}."))
    return pairs


def write(stem: str, pairs: list[tuple[str, str]]) -> None:
    for index, suffix in enumerate(("en", "de")):
        with open(f"{stem}.{suffix}", "w", encoding="utf-8") as handle:
            handle.writelines(pair[index] + "\n" for pair in pairs)


if __name__ == "__main__":
    pairs = all_pairs()
    random.Random(5).shuffle(pairs)
    write("train", pairs[:240])
    write("dev", pairs[240:300])
