"""Writes the demo NER corpus (train.txt, dev.txt): invented news-style sentences.

CoNLL-2003 layout (``token POS chunk NER``, ``-DOCSTART-`` lines, blank line between sentences)
and its IOB1 tags: ``I-X`` starts an entity, ``B-X`` only where an entity directly follows one
of the same type. All names are made up. Run from this folder: python generate.py.
Deterministic (fixed seed).
"""

import random

PER = [["Anna", "Keller"], ["Marcus", "Obi"], ["Lena", "Varga"], ["Tomas", "Reyes"],
       ["Ida", "Holm"], ["Karim", "Haddad"], ["Sofia", "Lind"], ["Pavel", "Novak"],
       ["Mei", "Tanaka"], ["Oskar", "Berg"], ["Nadia"], ["Ruth", "Amsel"], ["Jonas", "Weber"],
       ["Clara", "Moss"], ["Elias", "Brandt"], ["Hugo"], ["Greta", "Falk"], ["Ravi", "Menon"]]
LOC = [["Lisbon"], ["Oslo"], ["Nairobi"], ["Quito"], ["Tallinn"], ["Kyoto"], ["New", "Amsterdam"],
       ["Port", "Elin"], ["Bergen"], ["Valdora"], ["Red", "Valley"], ["Marrow", "Bay"],
       ["Corvia"], ["Lake", "Tessel"], ["Brill"], ["Ostmark"]]
ORG = [["Northwind", "Bank"], ["Helio", "Motors"], ["Civic", "Union"], ["Tessel", "Rail"],
       ["Brightwater"], ["Orbis", "Group"], ["Kestrel", "Airlines"], ["Valdora", "United"],
       ["Lumen", "Labs"], ["Harbor", "Council"], ["Ferro", "Steel"], ["Quill", "Press"]]
MISC = [["Valdoran"], ["Corvian"], ["Ostmark", "Open"], ["Harvest", "Cup"], ["Tesselian"],
        ["Nordic", "Games"], ["Brightwater", "Prize"], ["Lumen", "Index"]]


def ent(names, kind, pos="NNP"):
    return [(word, pos, kind) for word in random.choice(names)]


def w(text, pos):
    return [(word, tag, "O") for word, tag in zip(text.split(), pos.split())]


TEMPLATES = [
    lambda: ent(PER, "PER") + w("visited", "VBD") + ent(LOC, "LOC") + w("on Monday .", "IN NNP ."),
    lambda: ent(ORG, "ORG") + w("said profits rose", "VBD NNS VBD")
    + w(f"{random.randint(2, 40)} percent .", "CD NN ."),
    lambda: w("The", "DT") + ent(MISC, "MISC", "JJ") + w("team beat", "NN VBD") + ent(ORG, "ORG")
    + w(f"{random.randint(1, 5)}-{random.randint(0, 4)} in", "CD IN") + ent(LOC, "LOC")
    + w(".", "."),
    lambda: ent(PER, "PER") + w(", a spokesman for", ", DT NN IN") + ent(ORG, "ORG")
    + w(", declined to comment .", ", VBD TO VB ."),
    lambda: w("Talks between", "NNS IN") + ent(LOC, "LOC") + w("and", "CC") + ent(LOC, "LOC")
    + w("ended without a deal .", "VBD IN DT NN ."),
    lambda: ent(PER, "PER") + w("won the", "VBD DT") + ent(MISC, "MISC") + w("in", "IN")
    + ent(LOC, "LOC") + w(".", "."),
    lambda: w("Shares of", "NNS IN") + ent(ORG, "ORG") + w("fell", "VBD")
    + w(f"{random.randint(1, 9)}.{random.randint(0, 9)} percent in", "CD NN IN")
    + ent(LOC, "LOC") + w("trading .", "NN ."),
    lambda: w("Police in", "NNS IN") + ent(LOC, "LOC") + w("arrested two men on", "VBD CD NNS IN")
    + w(random.choice(["Tuesday", "Friday", "Sunday"]), "NNP") + w(".", "."),
    lambda: ent(PER, "PER") + w("told", "VBD") + ent(ORG, "ORG") + w("that the", "IN DT")
    + ent(MISC, "MISC", "JJ") + w("economy would grow .", "NN MD VB ."),
    lambda: w("It was a quiet day .", "PRP VBD DT JJ NN ."),
    lambda: w("Rain is expected later this week .", "NN VBZ VBN RB DT NN ."),
    lambda: ent(ORG, "ORG") + w("will open an office in", "MD VB DT NN IN") + ent(LOC, "LOC")
    + w("next year , chief executive", "JJ NN , JJ NN") + ent(PER, "PER") + w("said .", "VBD ."),
    lambda: w("RESULTS :", "NNS :") + ent(PER, "PER") + w("(", "(") + ent(LOC, "LOC")
    + w(f") {random.randint(60, 75)}", ") CD"),
    lambda: ent(LOC, "LOC") + w(f"{random.randint(1996, 2024)}-0{random.randint(1, 9)}"
                                f"-1{random.randint(0, 9)}", "CD"),
    lambda: w("Fans of", "NNS IN") + ent(ORG, "ORG") + w("cheered as", "VBD IN") + ent(PER, "PER")
    + w("scored twice .", "VBD RB ."),
    lambda: w("The", "DT") + ent(MISC, "MISC", "JJ") + w("minister ,", "NN ,") + ent(PER, "PER")
    + w(", arrived in", ", VBD IN") + ent(LOC, "LOC") + w("late on Sunday .", "RB IN NNP ."),
]


def adjacent():
    """Two places next to each other: IOB1 writes B-LOC on the first word of the second."""
    first, second = random.sample(LOC, 2)
    return (w("Flights from", "NNS IN") + [(word, "NNP", "LOC") for word in first]
            + [(word, "NNP", "LOC#" if k == 0 else "LOC") for k, word in enumerate(second)]
            + w("were cancelled .", "VBD VBN ."))


def iob1(tokens):
    """Entity types -> IOB1 tags; ``TYPE#`` marks the first word of an adjacent entity."""
    out, previous = [], "O"
    for word, pos, kind in tokens:
        if kind == "O":
            out.append((word, pos, "O"))
            previous = "O"
            continue
        starts_new = kind.endswith("#")
        kind = kind.rstrip("#")
        prefix = "B-" if starts_new and previous == kind else "I-"
        out.append((word, pos, prefix + kind))
        previous = kind
    return out


def sentence(index):
    if index % 23 == 5:
        return iob1(adjacent())
    return iob1(random.choice(TEMPLATES)())


def chunk_tag(pos):
    if pos in (".", ",", ":", "(", ")"):
        return "O"
    if pos.startswith("N") or pos in ("DT", "JJ", "CD", "PRP"):
        return "I-NP"
    if pos.startswith("V") or pos in ("MD", "TO"):
        return "I-VP"
    return "I-PP"


def write(path, sentences, documents):
    with open(path, "w", encoding="utf-8") as handle:
        for document in range(documents):
            handle.write("-DOCSTART- -X- O O\n\n")
            for index in range(sentences // documents):
                for word, pos, tag in sentence(document * 1000 + index):
                    handle.write(f"{word} {pos} {chunk_tag(pos)} {tag}\n")
                handle.write("\n")


if __name__ == "__main__":
    random.seed(7)
    write("train.txt", 200, 5)
    write("dev.txt", 60, 2)
