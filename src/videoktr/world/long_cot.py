"""Long chain-of-thought references (the `long_cot` world style, docs/world-long-cot.md).

A reference walks through the clip the way a real reasoning chain does: an opener, a restatement of the
question, a hedge, one sentence per event in temporal order, a sentence saying the clip ends, a summary that
restates every event, a conclusion for the question's kind, a check and a closing sentence, then the answer.
Most tokens are filler and restatement; the tokens that carry the video (colours, shapes, where the narration
ends) and its order (which colour comes when) are few, and the label oracles mark them as in the short style.

Every sentence is picked from a small pool by (question text, slot, the question's hidden `phrasing`): the
text depends on the clip only through its event sequence, as the label oracles require, while the phrasing
drawn per row (not shown in the prompt) varies the filler the way sampled reasoning varies.

Pools are chosen so that where two clips' references can part (the sentence after an event: the next event
or the end), neither first word is a prefix of the other (so character and token divergence coincide).
"""

from __future__ import annotations

import zlib

PHRASINGS = 4  # hidden phrasing variants per question (drawn per row, part of the question dict)

OPENERS = ("Let me look at the clip carefully.", "Okay, let me watch the video from the start.",
           "Let me go through the clip step by step.", "Alright, I will check the frames one by one.")
RESTATE = {
    "first": ("The question asks which colour appeared first, so I need the earliest shape in the clip.",
              "I am asked for the colour of the first shape, so the order of the shapes matters here."),
    "last": ("The question asks which colour appeared last, so I need the latest shape in the clip.",
             "I am asked for the colour of the last shape, so the order of the shapes matters here."),
    "after": ("The question asks which colour came right after the {colour} shape, so I need to find the {colour} "
              "one and look at what follows it.",
              "I am asked what colour appeared just after the {colour} shape, so the order matters here."),
    "shape_of": ("The question asks what shape the {colour} one was, so I need to find the {colour} shape.",
                 "I am asked for the shape of the {colour} one, so I should look for that colour."),
    "colour_of": ("The question asks what colour the {shape} was, so I need to find the {shape}.",
                  "I am asked for the colour of the {shape}, so I should look for that shape."),
    "count": ("The question asks how many shapes appeared, so I need to count every shape in the clip.",
              "I am asked for the number of shapes, so I should count them all."),
    "count_shape": ("The question asks how many {shape}s appeared, so I need to count only the {shape}s.",
                    "I am asked for the number of {shape}s, so I should count just those."),
}
HEDGES = ("I should not guess from the wording alone; the answer depends on what the video shows.",
          "I have to be careful here, because only the video can tell me this.",
          "The text of the question does not give the answer away, so I need to watch closely.",
          "Let me not rush this and describe what I see first.")
FIRST_EVENT = ("At the start of the clip I can see a {e}.", "The first thing that shows up is a {e}.",
               "Right at the beginning there is a {e}.", "In the opening frames I notice a {e}.")
NEXT_EVENT = ("After that, a {e} appears.", "Next, I see a {e}.", "Later on, a {e} shows up.",
              "Following it, there is a {e}.")
END = ("Nothing else shows up after that, and the clip ends.", "No more shapes come after it; that is the end of "
       "the clip.", "Once it fades, the clip is over with nothing more to see.",
       "Beyond this point the clip shows only the empty background.")
SUMMARY = ("So, in order, the clip showed {seq}.", "To sum up, I saw {seq}, in that order.",
           "Putting it together, the sequence was {seq}.", "Let me restate what I saw: {seq}.")
CONCLUDE = {
    "first": ("The earliest one was the {e}, so the first colour is {a}.",
              "Nothing came before the {e}, which makes {a} the first colour."),
    "last": ("The latest one was the {e}, so the last colour is {a}.",
             "Nothing came after the {e}, which makes {a} the last colour."),
    "after": ("The {colour} shape was followed directly by the {e}, so the colour right after {colour} is {a}.",
              "Right after the {colour} one came the {e}, which makes the answer {a}."),
    "shape_of": ("The {colour} one was a {a}, so its shape is {a}.",
                 "Looking at the {colour} shape again, it was a {a}."),
    "colour_of": ("The only {shape} in the clip was {a}, so its colour is {a}.",
                  "Looking at the {shape} again, it was {a}."),
    "count": ("Counting them one by one, there were {a} shapes in total.",
              "Going through them again, I count {a} shapes."),
    "count_shape": ("Counting only the {shape}s, there were {a} of them.",
                    "Going through them again, I count {a} {shape}s."),
}
CHECKS = ("Let me double check this against the clip: yes, that matches what I saw.",
          "I am fairly confident about this.",
          "Checking once more, this is consistent with what the video showed.", "That seems right to me.")
CLOSERS = ("So the answer is {a}.", "Therefore, the final answer is {a}.", "The answer should be {a}.",
           "So my answer is {a}.")

KINDS = tuple(RESTATE)


def _pick(pool: tuple, question_key: str, phrasing: int, slot: str) -> str:
    return pool[zlib.crc32(f"{question_key}|{slot}|{phrasing}".encode()) % len(pool)]


def long_think(events: list[tuple[str, str]], question: dict, question_key: str, answer: str) -> str:
    """The reasoning of a long reference (inside <think>), for a well-posed question with answer `answer`."""
    kind = question["kind"]
    if kind not in RESTATE:
        raise ValueError(f"the long_cot style has no template for kind {kind!r} (kinds: {KINDS})")
    ph = int(question.get("phrasing", 0))
    params = {k: v for k, v in question.items() if k in ("colour", "shape")}

    def pick(pool, slot):
        return _pick(pool, question_key, ph, slot)

    sentences = [pick(OPENERS, "open"), pick(RESTATE[kind], "restate").format(**params), pick(HEDGES, "hedge")]
    for i, (c, s) in enumerate(events):
        pool = FIRST_EVENT if i == 0 else NEXT_EVENT
        sentences.append(pick(pool, f"event{i}").format(e=f"{c} {s}"))
    sentences.append(pick(END, f"end{len(events)}"))
    seq = ", then ".join(f"a {c} {s}" for c, s in events)
    sentences.append(pick(SUMMARY, "summary").format(seq=seq))
    colours = [c for c, _ in events]
    if kind == "first":
        key_event = events[0]
    elif kind == "last":
        key_event = events[-1]
    elif kind == "after":
        key_event = events[colours.index(question["colour"]) + 1]
    else:
        key_event = None
    e = f"{key_event[0]} {key_event[1]}" if key_event else ""
    sentences.append(pick(CONCLUDE[kind], "conclude").format(e=e, a=answer, **params))
    sentences.append(pick(CHECKS, "check"))
    sentences.append(pick(CLOSERS, "close").format(a=answer))
    return " ".join(sentences)


def corpus_texts(colours, shapes, max_events: int) -> list[str]:
    """Every sentence of every pool with every colour, shape and count filled in (for the tokenizer corpus)."""
    events = [f"{c} {s}" for c in colours for s in shapes]
    params = [{"colour": c, "shape": s} for c in colours for s in shapes]
    answers = list(colours) + list(shapes) + [str(n) for n in range(max_events + 1)]
    texts = list(OPENERS + HEDGES + END + CHECKS)
    for pool in RESTATE.values():
        texts += [t.format(**p) for t in pool for p in params]
    for t in FIRST_EVENT + NEXT_EVENT:
        texts += [t.format(e=e) for e in events]
    for t in SUMMARY:
        texts += [t.format(seq=", then ".join(f"a {e}" for e in events[i:i + 3])) for i in range(len(events))]
    for pool in CONCLUDE.values():
        texts += [t.format(e=e, a=a, **p) for t in pool for e, p in zip(events, params) for a in answers]
    texts += [t.format(a=a) for t in CLOSERS for a in answers]
    texts += [f"<answer>{a}</answer>" for a in answers]  # the answer word right after the tag (no space)
    return texts + [" " + t for t in texts]  # inside a response every sentence but the first follows a space
