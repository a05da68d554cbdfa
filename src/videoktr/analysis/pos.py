"""Word categories of response tokens: a part-of-speech tagger (spaCy's English pipeline, an optional extra) or the
synthetic world's own token roles, mapped onto the model's tokens.

A tagger is a function text -> [(start, end, category)] over character spans of the text. `token_categories` gives
each response token the category of the first word its non-space characters overlap: "SPACE" for a token of
whitespace only (or a partial character that decodes to nothing), "FORMAT" for the tags and special tokens of the
response format (<think>, </answer>, <|im_end|>), which are blanked before tagging so that they neither reach the
tagger nor shift its character offsets.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

Tagger = Callable[[str], list[tuple[int, int, str]]]

SPACY_MODEL = "en_core_web_sm"
POS_INSTALL = ("pip install 'videoktr[pos]' && python -m spacy download en_core_web_sm "
               "(the model comes from spaCy's releases on GitHub; on an offline machine install its wheel from a "
               "local copy)")
FORMAT_TOKEN = re.compile(r"^\s*<\|?/?[A-Za-z_]+\|?>\s*$")
_WORD = re.compile(r"[A-Za-z]+|\d+(?:\.\d+)?|[^\sA-Za-z\d]")
# the synthetic world's roles (see world/questions.py's reference responses)
WORLD_ROLES = ("colour", "shape", "number", "order", "function", "punct")
ORDER_WORDS = frozenset({"first", "then", "last", "after", "before", "next", "right"})
NUMBER_WORDS = frozenset("zero one two three four five six seven eight nine ten eleven twelve".split())


class TaggerUnavailable(RuntimeError):
    """No part-of-speech tagger is installed; the message names the install command."""


def spacy_tagger(model: str = SPACY_MODEL) -> Tagger:
    """spaCy's universal POS tags (NOUN, VERB, PRON, ADV, AUX, DET, ADP, PUNCT, ...; the paper's Fig. 4 / 6b)."""
    try:
        import spacy
    except ImportError:
        raise TaggerUnavailable(f"part-of-speech shares need spaCy and its English model: {POS_INSTALL}") from None
    try:
        nlp = spacy.load(model, disable=["parser", "ner", "lemmatizer"])
    except OSError:
        raise TaggerUnavailable(f"spaCy is installed but its model {model!r} is not: {POS_INSTALL}") from None

    def tag(text: str) -> list[tuple[int, int, str]]:
        return [(t.idx, t.idx + len(t.text), t.pos_) for t in nlp(text) if not t.is_space]

    return tag


def world_tagger(colours: Sequence[str], shapes: Sequence[str]) -> Tagger:
    """The synthetic world's token roles: colour names, shape names (and their plurals), numbers (digits and number
    words), order words (first, then, last, after, ...), punctuation, and every other word a function word."""
    colours, shapes = {c.lower() for c in colours}, {s.lower() for s in shapes}
    plural = {s + "s" for s in shapes}

    def role(word: str) -> str:
        w = word.lower()
        if w in colours:
            return "colour"
        if w in shapes or w in plural:
            return "shape"
        if w[0].isdigit() or w in NUMBER_WORDS:
            return "number"
        if w in ORDER_WORDS:
            return "order"
        if w[0].isalpha():
            return "function"
        return "punct"

    def tag(text: str) -> list[tuple[int, int, str]]:
        return [(m.start(), m.end(), role(m.group())) for m in _WORD.finditer(text)]

    return tag


def token_categories(tokens: Sequence[str], tagger: Tagger) -> list[str]:
    """One category per token (see the module docstring); the tokens' concatenation is the text tagged."""
    spans, pos = [], 0
    for t in tokens:
        spans.append((pos, pos + len(t)))
        pos += len(t)
    fmt = [bool(t) and FORMAT_TOKEN.match(t) is not None for t in tokens]
    text = "".join(" " * len(t) if f else t for t, f in zip(tokens, fmt))
    words = sorted(tagger(text))
    out, w = [], 0
    for (start, end), t, f in zip(spans, tokens, fmt):
        if f:
            out.append("FORMAT")
            continue
        first = start + (len(t) - len(t.lstrip()))  # the token's first non-space character
        if first >= end:
            out.append("SPACE")
            continue
        while w < len(words) and words[w][1] <= first:
            w += 1
        # the first word reaching past the token's first character, if it starts inside the token
        out.append(words[w][2] if w < len(words) and words[w][0] < end else "SPACE")
    return out
