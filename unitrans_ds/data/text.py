"""Caption, question and answer text normalization, as BLIP's `data/utils.py` (`pre_caption`, `pre_question`).

Called by the loaders on every text before it reaches a batch, so that training and evaluation see the same
strings. Two small, deliberate departures from BLIP, both about whitespace only: every run of whitespace
(including a single newline or tab, which BLIP keeps) becomes one space, and questions are stripped on both
sides (BLIP only strips the right).
"""

from __future__ import annotations

import re

# BLIP's punctuation set: `.!"()*#:;~`. Captions replace it with a space, questions delete it (BLIP does the same).
_PUNCT = re.compile(r"([.!\"()*#:;~])")
_SPACES = re.compile(r"\s+")

MAX_CAPTION_WORDS = 30
MAX_VIDEO_CAPTION_WORDS = 40
MAX_QUESTION_WORDS = 50


def _truncate(text: str, max_words: int) -> str:
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def pre_caption(caption: str, max_words: int = MAX_CAPTION_WORDS) -> str:
    """Lowercase, punctuation `.!"()*#:;~` -> space, collapse whitespace, strip, keep the first `max_words` words."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    text = _PUNCT.sub(" ", caption.lower())
    return _truncate(_SPACES.sub(" ", text).strip(), max_words)


def pre_question(question: str, max_words: int = MAX_QUESTION_WORDS) -> str:
    """Lowercase, delete punctuation `.!"()*#:;~`, collapse whitespace, strip, keep the first `max_words` words."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    text = _PUNCT.sub("", question.lower())
    return _truncate(_SPACES.sub(" ", text).strip(), max_words)


def normalize_answer_text(answer: str) -> str:
    """Lowercase and collapse whitespace of a raw VQA answer, keeping its punctuation.

    Punctuation is meaningful in answers ("2.5", "t-shirt"); the official VQA normalization (contractions,
    number words, articles) is the metric's job and is applied to predictions and references alike there.
    """
    return _SPACES.sub(" ", answer.lower()).strip()
