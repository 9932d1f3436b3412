"""BLIP's caption / question normalization (BLIP `data/utils.py`), checked on hand-worked strings."""

from __future__ import annotations

import pytest

from unitrans_ds.data.text import normalize_answer_text, pre_caption, pre_question


def test_caption_lowercases_and_replaces_blip_punctuation_with_spaces():
    assert pre_caption('A Man. Riding!a "Horse" (brown)*#:;~ fast') == "a man riding a horse brown fast"


def test_caption_keeps_punctuation_outside_blips_set():
    # BLIP's set is .!"()*#:;~ ; commas, question marks, apostrophes and hyphens stay.
    assert pre_caption("It's a dog, isn't it? a well-known one") == "it's a dog, isn't it? a well-known one"


def test_caption_collapses_and_strips_whitespace_including_newlines():
    # Real COCO caption files carry stray spaces and newlines.
    assert pre_caption("  A bathroom   with a toilet.\n") == "a bathroom with a toilet"
    assert pre_caption("two\ncats\ton a couch") == "two cats on a couch"


def test_caption_truncates_to_max_words():
    words = [f"w{i}" for i in range(45)]
    assert pre_caption(" ".join(words)) == " ".join(words[:30])
    assert pre_caption(" ".join(words), max_words=40) == " ".join(words[:40])
    assert pre_caption("one two three", max_words=5) == "one two three"


def test_question_deletes_punctuation_instead_of_spacing_it():
    assert pre_question("What color is the man's shirt.") == "what color is the man's shirt"
    assert pre_question("Is it e.g. the (red) one?") == "is it eg the red one?"
    assert pre_question("  How   many\ndogs?  ") == "how many dogs?"


def test_question_truncates_to_fifty_words():
    words = [f"q{i}" for i in range(60)]
    assert pre_question(" ".join(words)).split(" ") == words[:50]


def test_max_words_must_be_positive():
    with pytest.raises(ValueError, match="max_words"):
        pre_caption("a b", max_words=0)
    with pytest.raises(ValueError, match="max_words"):
        pre_question("a b", max_words=0)


def test_answers_keep_punctuation_but_lose_case_and_extra_spaces():
    assert normalize_answer_text("  T-Shirt  2.5 ") == "t-shirt 2.5"
