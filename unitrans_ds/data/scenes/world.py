"""The words and looks of the `scenes` world: what both domains share and what domain B changes.

Both domains use the SAME concepts and words (colours, shapes, sizes, marks, positions, relations, motions):
a model pretrained on A has seen every word it meets in B. What B changes is how they look (palette, hatched
and outlined objects, a dark textured background, clutter, marks drawn in white instead of black) and how the
captions are phrased (which relations are named, which opening words). Every word is a whole token of the
demo vocabulary (`unitrans_ds/assets/tiny_vocab.txt`), whose words the committed tiny BLIPs' tokenizers bake in.
"""

from __future__ import annotations

from typing import Any

COLORS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "cyan")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "heart")
SIZES = {"small": 0.095, "large": 0.14}  # radius as a fraction of the side: large neighbours never touch
# A surface mark drawn on the object; the vocabulary has no pattern words ("striped", "dotted"), so the
# texture attribute is a mark named by words it has. "ring" and "cross" are therefore not used as shapes.
MARKS = ("none", "ring", "cross")
NUMBERS = ("zero", "one", "two", "three", "four", "five")  # in captions and questions
# Answers to "how many" are digits, as in VQAv2's annotations: the evaluators normalise a predicted "two" to "2"
# but leave a ground truth that all ten annotators agree on as it is, so a spelled-out answer could never match.
ANSWER_NUMBERS = ("0", "1", "2", "3", "4", "5")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "middle", "right")
DIRECTIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
# Relations hold between objects in ADJACENT grid cells, so "the shape to the left of X" names one shape.
RELATIONS = {"to the left of": (0, -1), "to the right of": (0, 1), "above": (-1, 0), "below": (1, 0)}
YES_NO = ("yes", "no")

DOMAINS: dict[str, dict[str, Any]] = {
    "a": {
        # Flat, saturated fills on a plain light background; black marks; no clutter.
        "palette": {
            "red": (220, 40, 40),
            "green": (40, 170, 60),
            "blue": (40, 80, 220),
            "yellow": (230, 200, 30),
            "orange": (245, 140, 20),
            "purple": (150, 60, 200),
            "pink": (250, 120, 190),
            "cyan": (30, 210, 220),
        },
        "style": "flat",
        "background": "plain",
        "mark_rgb": (25, 25, 25),
        "clutter": (0, 0),
        # Language: relations mostly left/right, captions mostly open with "a picture of" or nothing.
        "horizontal_relation_p": 0.75,
        "prefixes": {"": 0.5, "a picture of": 0.4, "a photo of": 0.05, "an image showing": 0.05},
    },
    "b": {
        # The same hues as paint under a warm lamp: duller, shifted; hatched fills with a dark outline on a dark,
        # striped, noisy background; white marks; grey line-and-dot clutter that is not a shape.
        "palette": {
            "red": (200, 60, 55),
            "green": (95, 165, 70),
            "blue": (70, 100, 200),
            "yellow": (225, 195, 85),
            "orange": (230, 125, 55),
            "purple": (135, 75, 170),
            "pink": (235, 145, 175),
            "cyan": (75, 185, 195),
        },
        "style": "hatched",
        "background": "textured",
        "mark_rgb": (245, 245, 245),
        "clutter": (3, 7),
        "horizontal_relation_p": 0.25,
        "prefixes": {"": 0.2, "a picture of": 0.05, "a photo of": 0.4, "an image showing": 0.35},
    },
}
SPLITS = ("train", "val", "test")
TASK_SETS = ("image", "video")


def a(phrase: str) -> str:
    """The phrase with its indefinite article ("an orange star")."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def name(obj: dict[str, Any], size: bool = False, mark: bool = False) -> str:
    """ "red circle", or with `size` / `mark` "small red circle with a ring"."""
    words = f"{obj['size']} {obj['color']} {obj['shape']}" if size else f"{obj['color']} {obj['shape']}"
    if mark and obj["mark"] != "none":
        words += f" with a {obj['mark']}"
    return words


def where(row: int, col: int) -> str:
    """The position phrase of a 3x3 grid cell ("at the top left", "in the center", "on the left")."""
    if row == 1 and col == 1:
        return "in the center"
    if row == 1:
        return f"on the {COLS[col]}"
    if col == 1:
        return f"at the {ROWS[row]}"
    return f"at the {ROWS[row]} {COLS[col]}"


def where_answer(row: int, col: int) -> str:
    """The short answer to "where is ...": "top left", "center", "left", "top", ..."""
    phrase = where(row, col)
    return phrase.split(" ", 2)[2] if phrase.startswith(("at the", "on the", "in the")) else phrase
