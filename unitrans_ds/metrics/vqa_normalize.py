"""The official VQA answer normalization (GT-Vision-Lab/VQA `vqaEval.py`, the v2.0 release that LAVIS uses).

The tables (contractions, number words, articles, punctuation and the two regexes) are the official ones, copied
verbatim into `unitrans_ds/assets/vqa_normalization_tables.json` with their source commit. The two steps below
keep the official code's quirks on purpose, because the point is to reproduce the official server's numbers:
- punctuation is deleted outright when the RAW answer has that mark next to a space, or has a digit-comma-digit
  group anywhere ("1,000" -> "1000"); otherwise each mark becomes a space ("black/white" -> "black white");
- the period regex `(?!<=\\d)(\\.)(?!\\d)` deletes every period not followed by a digit ("2.5" keeps its
  period), and the official call passes `re.UNICODE` (32) where `re.sub` takes its count, so at most 32 periods
  go;
- number words become digits only for none/zero..ten, word by word, after lowercasing; contractions are looked
  up word by word after the articles are dropped (capitalized keys such as "Im" can never match after
  lowercasing, as in the official code).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

_TABLES_FILE = "vqa_normalization_tables.json"
# The official code calls `periodStrip.sub("", text, re.UNICODE)`, where the third positional argument is count.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


@dataclass(frozen=True)
class VqaTables:
    """The official normalization tables, loaded once from the package assets."""

    contractions: dict[str, str]
    manual_map: dict[str, str]
    articles: frozenset[str]
    punct: tuple[str, ...]
    period_strip: re.Pattern
    comma_strip: re.Pattern


@lru_cache(maxsize=1)
def vqa_tables() -> VqaTables:
    """Load `unitrans_ds/assets/vqa_normalization_tables.json` (packaged with the wheel)."""
    path = resources.files("unitrans_ds").joinpath("assets", _TABLES_FILE)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"The VQA normalization tables are missing from the package ({path}); reinstall unitrans_ds "
            "(`pip install -e .`) so that its assets are present."
        ) from err
    return VqaTables(
        contractions=dict(raw["contractions"]),
        manual_map=dict(raw["manualMap"]),
        articles=frozenset(raw["articles"]),
        punct=tuple(raw["punct"]),
        period_strip=re.compile(raw["periodStrip_regex"]),
        comma_strip=re.compile(raw["commaStrip_regex"]),
    )


def process_punctuation(text: str) -> str:
    """The official `processPunctuation`: drop or space out punctuation, then strip periods (see module doc)."""
    t = vqa_tables()
    out = text
    # The official test looks at the raw text for every mark, not at the text as it is being rewritten.
    has_digit_comma = t.comma_strip.search(text) is not None
    for p in t.punct:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return t.period_strip.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official `processDigitArticle`: lowercase, number words to digits, drop articles, add apostrophes."""
    t = vqa_tables()
    words = [t.manual_map.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in t.articles]
    return " ".join(t.contractions.get(w, w) for w in words)


def clean_whitespace(text: str) -> str:
    """The official first step on every answer: newlines and tabs to spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(ans: str) -> str:
    """Full official normalization of one answer: whitespace, punctuation, then digits/articles/contractions.

    "Two" -> "2", "a dog" -> "dog", "dont" -> "don't", "yes." -> "yes", "1,000" -> "1000".
    """
    return process_digit_article(process_punctuation(clean_whitespace(ans)))
