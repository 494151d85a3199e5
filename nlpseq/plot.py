"""Attention heat maps as PNG files, written with zlib alone (no plotting library needed).

Rows are output tokens (labels on the left), columns are source tokens (labels on top, read
bottom to top); a cell's colour is its attention weight on a fixed 0..1 scale (dark purple =
0, yellow = 1, an approximation of viridis). Labels use a built-in 5x7 pixel font of upper-case
ASCII: letters are shown in upper case, accents are dropped and other characters drawn as a box.
"""

from __future__ import annotations

import struct
import unicodedata
import zlib
from collections.abc import Sequence
from pathlib import Path

# 5x7 glyphs: seven rows of five bits each (bit 4 = leftmost pixel).
FONT: dict[str, tuple[int, ...]] = {
    "A": (0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11),
    "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E),
    "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F),
    "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F),
    "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11),
    "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11),
    "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D),
    "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E),
    "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A),
    "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04),
    "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E),
    "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F),
    "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02),
    "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E),
    "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E),
    "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    " ": (0, 0, 0, 0, 0, 0, 0),
    ".": (0, 0, 0, 0, 0, 0x0C, 0x0C),
    ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08),
    "!": (0x04, 0x04, 0x04, 0x04, 0, 0, 0x04),
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04),
    "-": (0, 0, 0, 0x1F, 0, 0, 0),
    "_": (0, 0, 0, 0, 0, 0, 0x1F),
    "'": (0x0C, 0x04, 0x08, 0, 0, 0, 0),
    '"': (0x0A, 0x0A, 0x0A, 0, 0, 0, 0),
    ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    ";": (0, 0x0C, 0x0C, 0, 0x0C, 0x04, 0x08),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0),
    "<": (0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02),
    ">": (0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08),
    "&": (0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D),
    "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0),
    "=": (0, 0, 0x1F, 0, 0x1F, 0, 0),
}
BOX = (0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F)
VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)


def label_text(token: str) -> str:
    """A token as the font can draw it: Metaspace ``▁`` as ``_``, upper case, no accents."""
    text = token.replace("\u2581", "_").replace("ß", "ss")
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if not unicodedata.combining(c)).upper()


def colour(value: float) -> tuple[int, int, int]:
    """Linear interpolation between the viridis anchors; ``value`` is clipped to [0, 1]."""
    value = min(max(float(value), 0.0), 1.0) * (len(VIRIDIS) - 1)
    low = min(int(value), len(VIRIDIS) - 2)
    frac = value - low
    a, b = VIRIDIS[low], VIRIDIS[low + 1]
    return tuple(round(x + (y - x) * frac) for x, y in zip(a, b))


class Canvas:
    """An RGB pixel buffer that can be saved as PNG."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.pixels = bytearray(WHITE * (width * height))

    def fill(self, x: int, y: int, w: int, h: int, rgb: tuple[int, int, int]) -> None:
        for row in range(max(y, 0), min(y + h, self.height)):
            start = (row * self.width + max(x, 0)) * 3
            end = (row * self.width + min(x + w, self.width)) * 3
            self.pixels[start:end] = bytes(rgb) * ((end - start) // 3)

    def text(self, x: int, y: int, text: str, scale: int = 1, vertical: bool = False) -> None:
        """Draw ``text`` with its top-left at (x, y); ``vertical`` reads bottom to top and
        (x, y) is then the bottom-left corner."""
        for index, char in enumerate(text):
            glyph = FONT.get(char, BOX)
            for row, bits in enumerate(glyph):
                for col in range(5):
                    if not bits & (0x10 >> col):
                        continue
                    if vertical:  # rotated 90 degrees counter-clockwise
                        px, py = x + row * scale, y - (index * 6 + col + 1) * scale
                    else:
                        px, py = x + (index * 6 + col) * scale, y + row * scale
                    self.fill(px, py, scale, scale, BLACK)

    def png(self) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        stride = self.width * 3
        raw = b"".join(
            b"\x00" + bytes(self.pixels[row * stride : (row + 1) * stride])
            for row in range(self.height)
        )
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def attention_png(
    weights: Sequence[Sequence[float]],
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    path: str | Path,
    cell: int = 24,
    scale: int = 2,
) -> None:
    """Write the heat map of ``weights`` (len(target_tokens) x len(source_tokens)) to ``path``."""
    rows, cols = len(target_tokens), len(source_tokens)
    if len(weights) != rows or any(len(r) != cols for r in weights):
        raise ValueError("weights must have one row per target and one column per source token")
    row_labels = [label_text(t) for t in target_tokens]
    col_labels = [label_text(t) for t in source_tokens]
    char = 6 * scale
    margin = 2 * scale
    left = max([len(t) for t in row_labels] + [1]) * char + 2 * margin
    top = max([len(t) for t in col_labels] + [1]) * char + 2 * margin
    canvas = Canvas(left + cols * cell + margin, top + rows * cell + margin)
    for i, row in enumerate(weights):
        for j, value in enumerate(row):
            canvas.fill(left + j * cell, top + i * cell, cell, cell, colour(value))
    glyph_height = 7 * scale
    for i, label in enumerate(row_labels):
        x = left - margin - len(label) * char
        canvas.text(x, top + i * cell + (cell - glyph_height) // 2, label, scale)
    for j, label in enumerate(col_labels):
        x = left + j * cell + (cell - glyph_height) // 2
        canvas.text(x, top - margin, label, scale, vertical=True)
    canvas.fill(left - 1, top - 1, cols * cell + 1, 1, GREY)
    canvas.fill(left - 1, top - 1, 1, rows * cell + 1, GREY)
    Path(path).write_bytes(canvas.png())
