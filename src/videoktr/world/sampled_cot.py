"""Sampled chain-of-thought references (the `sampled_cot` world style, docs/world-sampled-cot.md).

A reference walks through the clip like the long_cot world's (an opener, a restatement of the question, a
hedge, one sentence per event in temporal order, a sentence saying the clip ends, a summary, a conclusion, a
check, a closing sentence, then the answer), but its filler is SAMPLED: nearly every word outside the clip's
content is drawn from a small set of synonyms, clauses are optional or come in either order, and every such
choice is drawn independently of every other one and of the clip. A model trained on these references must
sample its filler with real entropy, so low-information tokens still carry policy gradient.

Templates are written in a small language: words and punctuation; `{a|b|c}` is a choice among alternatives
(each a sequence, possibly empty: an optional clause; possibly holding further choices), drawn uniformly;
`$c`, `$s` (an event's colour and shape), `$q`, `$qs` (the question's colour or shape, and its plural) and `$a`
(the answer) are filled in. Each choice has a slot name (the sentence's name and the choice's position in the
template, depth first); a row's choices are `choice_index(question["filler"], slot, n)`, a keyed hash of the row's
filler seed and the slot, so they are independent across slots and rows and any clip's reference can be
rendered with the SAME choices (what the label oracles need).

Properties the label oracles rely on (checked against a direct computation of every token's distribution in
tests/world/test_sampled_cot.py):
- the filler never depends on the clip: the choices do not, and the alternatives hold no clip content;
- the text reveals the choices: within a choice the alternatives start with different words (an empty one with a
  word no other alternative starts with), so a prefix tells which alternatives were taken;
- the clip enters only in the narration (colours and shapes of the events, and whether another event or the end
  comes next: the first words of the next-event and end sentences are disjoint), and everything after the
  narration is a function of the event sequence it has fully told.
"""

from __future__ import annotations

import functools
import hashlib
import re

KINDS = ("first", "last", "after", "shape_of", "colour_of", "count", "count_shape")

# One template per sentence (or per kind). Nearly every word is a choice; what stays fixed is punctuation, a few
# function words, the question's own colour or shape ($q), and the clip's content.
OPEN = "{Okay|Alright|Well|Right} {I|we} {will|shall|can} {watch|view|study|check} {the|this} " \
       "{clip|video|footage} {carefully|closely|slowly}."
_ASKS = "{The|This} {question|task|prompt} {asks|wants}"
RESTATE = {
    "first": _ASKS + " {which|what} {colour|hue} {appeared|came|showed} {first|earliest}.",
    "last": _ASKS + " {which|what} {colour|hue} {appeared|came|showed} {last|latest}.",
    "after": _ASKS + " {which|what} {colour|hue} {came|followed|appeared} {right|just|directly} after the $q "
                     "{shape|one}.",
    "shape_of": _ASKS + " {which|what} shape the $q {one|item} {was|had}.",
    "colour_of": _ASKS + " {which|what} {colour|hue} the $q {was|had}.",
    "count": _ASKS + " how many {shapes|objects|items} {appeared|showed|came}.",
    "count_shape": _ASKS + " how many $qs {appeared|showed|came}.",
}
HEDGE = "{I|We} {must|should} {not|never} {guess|assume} {from|by} {the|its} {wording|text} {alone|only}."
# the event sentences: the first words of NEXT_EVENT and END are disjoint (where the clip decides between them)
FIRST_EVENT = "{First|Initially|Firstly} {I|we} {see|spot|notice|observe} {a|one} $c $s" \
              "{.|, {then|and} {it|this} {fades|vanishes}.}"
NEXT_EVENT = "{Then|Next|Later|Afterwards} {I|we} {see|spot|notice|observe} {a|one} $c $s" \
             "{.|, {then|and} {it|this} {fades|vanishes}.}"
END = "{Finally|Eventually|Ultimately} {the|this} {clip|video} {ends|stops|finishes}."
SUMMARY_HEAD = "{So|Thus} {in|by} {order|sequence} {I|we} {saw|had}"
SUMMARY_EVENT = "{a|one} $c $s"
SUMMARY_JOIN = "{then|and|next}"
_SO = "{So|Thus|Hence|Therefore}"
CONCLUDE = {
    "first": _SO + " {the|this} {first|earliest|initial} {colour|hue} {is|was} $a.",
    "last": _SO + " {the|this} {last|latest|final} {colour|hue} {is|was} $a.",
    "after": _SO + " {the|this} {colour|hue} {right|just|directly} after $q {is|was} $a.",
    "shape_of": _SO + " {the|this} $q {one|item} {is|was} {a|one} $a.",
    "colour_of": _SO + " {the|this} $q {is|was} $a.",
    "count": _SO + " {I|we} {count|counted} $a {shapes|objects|items}.",
    "count_shape": _SO + " {I|we} {count|counted} $a $qs.",
}
# two independent clauses, in either order (their first words differ)
CHECK = "{{This|That} {matches|fits} {the|this} {clip|video} and {it|everything} {seems|looks} {right|correct}.|" \
        "{It|Everything} {seems|looks} {right|correct} and {this|that} {matches|fits} {the|this} {clip|video}.}"
CLOSE = "{My|The} {final|} {answer|reply} {is|remains} $a."

PUNCT = {".", ",", ":"}
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_TOKEN = re.compile(r"\{|\}|\||\$\w+|[A-Za-z0-9']+|[.,:]")


class Choice:
    """A choice among alternatives (each a tuple of items: words, variables, nested choices), drawn uniformly."""

    __slots__ = ("slot", "alternatives")

    def __init__(self, slot: str, alternatives: tuple):
        self.slot, self.alternatives = slot, alternatives

    def __repr__(self) -> str:
        return f"Choice({self.slot!r}, {self.alternatives!r})"


@functools.lru_cache(maxsize=None)
def parse(template: str, name: str) -> tuple:
    """A template -> its items: str (a word, punctuation or a `$var`) or Choice, slots named `name.k`."""
    tokens = _TOKEN.findall(template)
    if "".join(tokens) != re.sub(r"\s+", "", template):
        raise ValueError(f"template {name!r} has characters outside the template language: {template!r}")
    counter = [0]

    def seq(i: int, stop: set) -> tuple[tuple, int]:
        items = []
        while i < len(tokens) and tokens[i] not in stop:
            if tokens[i] == "{":
                slot = f"{name}.{counter[0]}"
                counter[0] += 1
                alts, i = [], i + 1
                while True:
                    alt, i = seq(i, {"|", "}"})
                    alts.append(alt)
                    if i >= len(tokens):
                        raise ValueError(f"template {name!r}: unclosed '{{'")
                    i += 1
                    if tokens[i - 1] == "}":
                        break
                if len(alts) < 2:
                    raise ValueError(f"template {name!r}: a choice needs two alternatives")
                items.append(Choice(slot, tuple(alts)))
            elif tokens[i] == "}":
                raise ValueError(f"template {name!r}: unmatched '}}'")
            else:
                items.append(tokens[i])
                i += 1
        return tuple(items), i

    items, i = seq(0, set())
    if i != len(tokens):
        raise ValueError(f"template {name!r}: stray '{tokens[i]}'")
    return items


def _kind_key(kind: str) -> str:
    if kind not in RESTATE:
        raise ValueError(f"the sampled_cot style has no template for kind {kind!r} (kinds: {KINDS})")
    return kind


def grammar(events: list[tuple[str, str]], question: dict, answer: str) -> list[tuple[tuple, dict]]:
    """The response's structure for a well-posed question: (items, variables) per part, in order. The tags
    <think>, </think>, <answer>, </answer> are words of their own."""
    kind = _kind_key(question["kind"])
    q = question.get("colour") or question.get("shape") or ""
    base = {"q": q, "qs": f"{q}s", "a": answer}
    parts: list[tuple[tuple, dict]] = [(("<think>",), {}), (parse(OPEN, "open"), base),
                                       (parse(RESTATE[kind], "restate"), base), (parse(HEDGE, "hedge"), base)]
    for i, (c, s) in enumerate(events):
        template = FIRST_EVENT if i == 0 else NEXT_EVENT
        parts.append((parse(template, f"event{i}"), {"c": c, "s": s}))
    parts.append((parse(END, "end"), base))
    parts.append((parse(SUMMARY_HEAD, "summary"), base))
    for i, (c, s) in enumerate(events):
        if i:
            parts.append((parse(SUMMARY_JOIN, f"summary.join{i}"), base))
        parts.append((parse(SUMMARY_EVENT, f"summary.event{i}"), {"c": c, "s": s}))
    parts.append(((".",), {}))
    parts.append((parse(CONCLUDE[kind], "conclude"), base))
    parts.append((parse(CHECK, "check"), base))
    parts.append((parse(CLOSE, "close"), base))
    parts.append((("</think>", "<answer>", "$a", "</answer>"), base))
    return parts


def choice_index(seed: int, slot: str, n: int) -> int:
    """The alternative a row's filler seed takes at `slot` among n: a keyed hash, independent across slots."""
    h = hashlib.blake2b(f"{seed}|{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % n


def words(parts: list[tuple[tuple, dict]], pick) -> list[str]:
    """The words of a response, `pick(choice) -> alternative index` deciding every choice."""
    out: list[str] = []

    def walk(items, env):
        for item in items:
            if isinstance(item, Choice):
                walk(item.alternatives[pick(item)], env)
            elif item.startswith("$"):
                out.append(str(env[item[1:]]))
            else:
                out.append(item)

    for items, env in parts:
        walk(items, env)
    return out


def join(ws: list[str]) -> str:
    """Words -> text: one space between words, none before punctuation and none next to a tag."""
    text = ""
    for i, w in enumerate(ws):
        if i and w not in PUNCT and w not in TAGS and ws[i - 1] not in TAGS:
            text += " "
        text += w
    return text


def sampled_response(events: list[tuple[str, str]], question: dict, answer: str) -> str:
    """The full reference (`<think>...</think><answer>...</answer>`) with the row's filler seed's choices."""
    seed = int(question.get("filler", 0))
    return join(words(grammar(events, question, answer),
                      lambda ch: choice_index(seed, ch.slot, len(ch.alternatives))))


def split_response(text: str) -> tuple[str, str]:
    """(reasoning inside <think>, answer inside <answer>) of a rendered reference."""
    m = re.fullmatch(r"<think>(.*)</think><answer>(.*)</answer>", text, re.DOTALL)
    if m is None:
        raise ValueError(f"not a reference response: {text[:80]!r}")
    return m.group(1), m.group(2)


def visited_choices(events, question: dict, answer: str) -> list[Choice]:
    """The choices a row's reference passes through (the slots its filler seed decides), in order."""
    seed = int(question.get("filler", 0))
    seen: list[Choice] = []

    def pick(ch):
        seen.append(ch)
        return choice_index(seed, ch.slot, len(ch.alternatives))

    words(grammar(events, question, answer), pick)
    return seen


def filler_variants(events, question: dict, answer: str) -> list[str]:
    """The reference re-rendered with one visited choice changed to each other alternative (same clip): where each
    first departs from the row's text is a token whose distribution, given the prefix and the clip, is not a
    point mass (the `sampled` label)."""
    seed = int(question.get("filler", 0))
    parts = grammar(events, question, answer)
    out = []
    for ch in visited_choices(events, question, answer):
        own = choice_index(seed, ch.slot, len(ch.alternatives))
        for k in range(len(ch.alternatives)):
            if k != own:
                out.append(join(words(parts, lambda c, slot=ch.slot, k=k: (
                    k if c.slot == slot else choice_index(seed, c.slot, len(c.alternatives))))))
    return out


def all_words() -> set[str]:
    """Every fixed word and punctuation of every template (variables excluded)."""
    out: set[str] = set()

    def walk(items):
        for item in items:
            if isinstance(item, Choice):
                for alt in item.alternatives:
                    walk(alt)
            elif not item.startswith("$"):
                out.add(item)

    templates = [OPEN, HEDGE, FIRST_EVENT, NEXT_EVENT, END, SUMMARY_HEAD, SUMMARY_EVENT, SUMMARY_JOIN, CHECK, CLOSE,
                 *RESTATE.values(), *CONCLUDE.values()]
    for k, t in enumerate(templates):
        walk(parse(t, f"t{k}"))
    return out - PUNCT


def corpus_texts(colours, shapes, max_events: int, samples: int = 400, seed: int = 0) -> list[str]:
    """Tokenizer corpus: sampled references of every kind (random clips and filler seeds), and every word with and
    without a leading space, so that each world word becomes one token."""
    import numpy as np

    rng = np.random.default_rng(seed)
    answers = list(colours) + list(shapes) + [str(n) for n in range(max_events + 1)]
    texts: list[str] = []
    for i in range(samples):
        kind = KINDS[i % len(KINDS)]
        k = int(rng.integers(2, max(2, max_events) + 1))
        cs = rng.choice(len(colours), size=min(k, len(colours)), replace=False)
        events = [(colours[int(c)], shapes[int(rng.integers(len(shapes)))]) for c in cs]
        q = {"kind": kind, "filler": int(rng.integers(2**31))}
        if kind in ("after", "shape_of"):
            q["colour"] = events[0][0]
        if kind in ("colour_of", "count_shape"):
            q["shape"] = shapes[int(rng.integers(len(shapes)))]
        texts.append(sampled_response(events, q, answers[int(rng.integers(len(answers)))]))
    vocab = sorted(all_words() | set(colours) | set(shapes) | {f"{s}s" for s in shapes} | set(answers))
    texts += [" ".join(vocab), " " + " ".join(vocab)]
    texts += [f"<answer>{a}</answer>" for a in answers]
    return texts
