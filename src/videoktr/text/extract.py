"""Answer extraction: model output text -> the answer it gives (an option label, yes/no, a number, a text), or
None when no answer can be read. Never a guess: an unparsed answer scores 0 and is counted.

Order of rules (`extract`):
1. The content of the LAST complete `<answer>...</answer>` (tags matched case-insensitively), read with the
   value rules below. An output that ends inside an unclosed `<answer>` (generation cut off) is read from there.
2. A *plain* output (no `<think>`/`<answer>` markup at all, i.e. a direct answer) goes first through the
   benchmark's official rule stage where that is rule-based (see "Official rules"), then through the value
   rules on the whole text.
3. Reasoning without an answer tag: the text after the last `</think>` is read with the value rules; if the
   reasoning was cut off (no `</think>`), only an explicit answer phrase ("the answer is (B)", last one) counts.

Value rules for choice questions (`parse_choice`; labels must be labels of the item's options):
  C1 the whole text is a label: "B", "b", "(B)", "B.", "B)", "[B]", "**B**", "\\boxed{B}", "Option B",
     "Caption A" (or its short index "A" / "1" for caption matching);
  C2 the text starts with an upper-case label followed by ".", ")" or ":" and more text: "B. text",
     "(B) text", "B) text", "B: text", "Caption A: text"; also "Answer: B ..." / "Option B ...";
  C3 the text is an option's text (case, spacing and end punctuation ignored), or a short text (at most 6
     words more than the option) that contains exactly one option's text;
  C4 an explicit answer phrase, last occurrence: "the answer is (B)", "Answer: B", "final answer is: B",
     "the correct option is B", "I choose B" ... (an "A" or "I" directly followed by a lower-case word is read
     as an article/pronoun, not a label);
  C5 a text of at most 4 words with exactly one stand-alone upper-case option label in it ("B is right").
Yes/no: the first word is yes/no; else an answer phrase ("the answer is no"); else a text of at most 4 words
containing exactly one of yes/no. Numbers: the text is a number (commas, $, % and surrounding words of a short
text ignored); else the number after an answer phrase (last); else the only number of a short text (<= 12
words). Text answers (open, ChartQA): the text after an answer phrase, else the whole text (<= 30 words when
there is no tag).

Official rules (applied to plain outputs; our verdict equals theirs item by item whenever their rules match):
- VideoMME (MME-Benchmarks/Video-MME, evaluation/eval_your_results.py): remove the answer prefixes listed in
  their script (two of their list entries are glued together by a missing comma, so "The best option is",
  "The correct option is", "Best answer:" and "Best option:" are only removed in those glued forms - we
  reproduce that), then take the first upper-case A, B, C or D anywhere in the text (so "Answer: C" reads as
  "A", exactly as their script does). No letter: their script leaves the item unanswered and excludes it from
  the denominator; we fall back to the value rules, and report `accuracy` over all items plus
  `accuracy_parsed` over the items we could read.
- TempCompass (llyx97/TempCompass, eval_multi-choice.py / eval_yes_no.py / eval_caption_matching.py, rule
  stage): multi-choice: the output equals the answer line, or is exactly "A"-"D", or starts with "A."-"D." or
  "A)"-"D)"; yes/no: the lower-cased output starts with "yes" or "no" (so "Not sure" reads as "no", as theirs);
  caption matching: the stripped output equals a whole option line, an option's sentence (also after "X) "),
  an option label ("Caption A") or its short index ("A", "1"), with "." removed. When the rule stage fails,
  TempCompass asks an LLM judge (ChatGPT); we use our value rules instead, so outputs that reach their judge
  may be scored differently (more strictly: no judge ever guesses).
Differences from other official or reference scripts:
- Video-Holmes' script takes the last <answer> but, without a tag, scans for letters in a fixed order (biased
  towards "A"); we never scan free text for a bare letter beyond C1-C5.
- MMVU's official evaluation asks an LLM (GPT-4o) to judge every answer, multiple-choice included; we read
  the option label with the rules above (its official prompt ends with "the final answer is: X", which C4
  reads) and score open-ended answers by normalised text match, a strict lower bound of an LLM judge.
- VideoMMMU is scored in lmms-eval with an MMMU-style parser (letters, option texts; open answers compared as
  numbers rounded to 2 decimals or as contained strings). MMMU's reference parser returns a random option when
  nothing parses; we never do. Open answers here: numbers equal after rounding to 2 decimals, as MMMU.
- Video-R1's evaluation script (used by the paper) takes the FIRST <answer>, the whole output when there is
  no tag, and compares option letters as exact strings ("B." != "B"), scoring free-form answers 0; we take
  the last tag and normalise labels.
- lmms-eval's Video-Holmes parser picks a random letter when it cannot parse; we never do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .item import Item

# --------------------------------------------------------------------------------------------- plumbing

_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_OPEN_TAG = re.compile(r"<answer>(?!.*</answer>)(.*)$", re.S | re.I)
_MARKUP = re.compile(r"</?(?:think|answer)>", re.I)
_END_TOKENS = ("</s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>")


@dataclass(frozen=True)
class Extraction:
    """value: the answer read from the output (normalised), or None. method: which rule produced it."""

    value: str | None
    method: str


def clean_output(output: str | None) -> str:
    text = "" if output is None else str(output)
    for tok in _END_TOKENS:
        text = text.replace(tok, "")
    return text


def last_answer_tag(text: str) -> str | None:
    """Content of the last complete <answer>...</answer>, else of a trailing unclosed <answer>, else None."""
    found = _TAG.findall(text)
    if found:
        return found[-1]
    m = _OPEN_TAG.search(text)
    return m.group(1) if m else None


def extract(output: str | None, item: Item) -> Extraction:
    """Read `item`'s answer from a raw model `output` (see the module docstring for the rules)."""
    raw = "" if output is None else str(output)
    text = clean_output(raw)
    content = last_answer_tag(text)
    if content is not None:
        value = parse_value(content, item, tagged=True)
        return Extraction(value, "answer_tag" if value is not None else "answer_tag_unparsed")
    if not _MARKUP.search(text):
        official = OFFICIAL_RULES.get(item.benchmark)
        if official is not None and output is not None:
            value = official(raw, item)
            if value is not None:
                return Extraction(value, f"official:{item.benchmark}")
        value = parse_value(text, item, tagged=False)
        return Extraction(value, "plain" if value is not None else "unparsed")
    parts = re.split(r"</think>", text, flags=re.I)
    if len(parts) > 1 and parts[-1].strip():
        value = parse_value(parts[-1], item, tagged=False)
        return Extraction(value, "after_think" if value is not None else "unparsed")
    value = parse_phrase_only(text, item)
    return Extraction(value, "phrase_in_reasoning" if value is not None else "unparsed")


def parse_value(text: str, item: Item, tagged: bool) -> str | None:
    kind = item.answer_type
    if kind in ("mc", "caption_matching"):
        return parse_choice(text, item.options or {}, captions=kind == "caption_matching")
    if kind == "yes_no":
        return parse_yes_no(text)
    if kind in ("numeric", "regression"):
        return parse_number(text)
    return parse_text(text, tagged)


def parse_phrase_only(text: str, item: Item) -> str | None:
    kind = item.answer_type
    if kind in ("mc", "caption_matching"):
        return _choice_phrase(text, item.options or {}, captions=kind == "caption_matching")
    if kind == "yes_no":
        return _yes_no_phrase(text)
    tail = _last_phrase_tail(text)
    if tail is None:
        return None
    if kind in ("numeric", "regression"):
        return parse_number(tail)
    return _clean_text(tail) or None


# --------------------------------------------------------------------------------------------- cleaning

_WRAPPERS = [
    re.compile(r"^\\boxed\{(.*)\}$", re.S),
    re.compile(r"^\\text\{(.*)\}$", re.S),
    re.compile(r"^\$+(.*?)\$+$", re.S),
    re.compile(r"^\*\*(.*)\*\*$", re.S),
    re.compile(r"^__(.*)__$", re.S),
    re.compile(r"^`(.*)`$", re.S),
    re.compile(r"^\"(.*)\"$", re.S),
    re.compile(r"^'(.*)'$", re.S),
    re.compile(r"^\[(.*)\]$", re.S),
]


def _unwrap(text: str) -> str:
    text = text.strip()
    changed = True
    while changed and text:
        changed = False
        for w in _WRAPPERS:
            m = w.match(text)
            if m:
                text, changed = m.group(1).strip(), True
    return text


def _norm(text: str) -> str:
    """Lower case, single spaces, no punctuation at the ends."""
    text = re.sub(r"\s+", " ", text.lower()).strip()
    return text.strip(" .,;:!?\"'`*()[]")


# --------------------------------------------------------------------------------------------- choices

_PHRASE = (r"(?i:\b(?:final\s+answer|correct\s+answer|best\s+answer|correct\s+option|best\s+option|correct\s+choice"
           r"|best\s+choice|answer|option|choice|I\s+choose|I\s+select|I\s+pick|I\s+go\s+with)"
           r"(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be|=))?\s*[:\-]?\s*"
           r"(?:(?:option|choice)\s+)?)")
_LETTER_PHRASE = re.compile(_PHRASE + r"(\()?\**\s*([A-Z])\s*\**(\))?(?![A-Za-z0-9'])")


def _short_index(label: str) -> str:
    return label.split()[-1] if " " in label else label


def _label_for(token: str, options: dict[str, str], captions: bool) -> str | None:
    """A label-like token ("B", "b", "Caption A", "A", "1") -> the option label it names, or None."""
    token = token.strip().rstrip(".:)").lstrip("(").strip()
    if not token:
        return None
    if token in options:
        return token
    if captions:
        for label in options:
            if token.lower() == label.lower():
                return label
        hits = [label for label in options if _short_index(label).lower() == token.lower()]
        return hits[0] if len(hits) == 1 else None
    if len(token) == 1 and token.upper() in options:
        return token.upper()
    return None


def parse_choice(text: str, options: dict[str, str], captions: bool = False) -> str | None:
    """Rules C1-C5 of the module docstring."""
    text = _unwrap(text)
    if not text or not options:
        return None
    first_line = text.splitlines()[0].strip()
    # C1: the whole text is a label
    whole = re.sub(r"^(?i:option|choice|answer\s*:?)\s+", "", text).strip()
    label = _label_for(whole, options, captions)
    if label is not None:
        return label
    # C2: starts with a label and punctuation
    if captions:
        for lab in options:
            if first_line.lower().startswith(lab.lower() + ":"):
                return lab
    m = re.match(r"^(?:(?i:answer|option|choice)\s*[:\-]?\s*)?\(?([A-Z])(?:[.):]|\s*$)", first_line)
    if m and m.group(1) in options:
        return m.group(1)
    m = re.match(r"^(?i:answer|option|choice)\s*[:\-]?\s*\(?([A-Z])\)?(?![A-Za-z0-9'])", first_line)
    if m and m.group(1) in options:
        return m.group(1)
    # C3: option text
    norm = _norm(re.sub(r"^\(?[A-Z][.):]\s+", "", text))
    normed = {lab: _norm(opt) for lab, opt in options.items() if opt}
    exact = [lab for lab, opt in normed.items() if opt == norm]
    if len(exact) == 1:
        return exact[0]
    n_words = len(norm.split())
    contained = [lab for lab, opt in normed.items()
                 if opt and re.search(r"(?<!\w)" + re.escape(opt) + r"(?!\w)", norm)
                 and n_words <= len(opt.split()) + 6]
    if len(contained) == 1:
        return contained[0]
    # C4: answer phrase (last)
    label = _choice_phrase(text, options, captions)
    if label is not None:
        return label
    # C5: a short text with one stand-alone label
    if len(text.split()) <= 4:
        hits = [m for m in re.finditer(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])", text) if m.group(1) in options]
        if len({m.group(1) for m in hits}) == 1 and not all(_article(m.group(1), text[m.end():]) for m in hits):
            return hits[0].group(1)
    return None


def _article(letter: str, rest: str) -> bool:
    """"A man ..." / "I think ...": an article or pronoun, not an option label."""
    return letter in "AI" and re.match(r"\s+[a-z]", rest) is not None


def _choice_phrase(text: str, options: dict[str, str], captions: bool) -> str | None:
    if captions:
        pattern = re.compile(_PHRASE + r"\(?\**\s*((?:(?i:caption|sentence|option)\s+)?[A-Z0-9])\b")
        for m in reversed(list(pattern.finditer(text))):
            label = _label_for(m.group(1), options, captions=True)
            if label is not None:
                return label
        return None
    for m in reversed(list(_LETTER_PHRASE.finditer(text))):
        paren_open, letter, paren_close = m.group(1), m.group(2), m.group(3)
        if letter not in options:
            continue
        if not (paren_open and paren_close) and _article(letter, text[m.end():]):
            continue  # "the answer is A man ..."
        return letter
    return None


# --------------------------------------------------------------------------------------------- yes / no


def parse_yes_no(text: str) -> str | None:
    text = _unwrap(text)
    m = re.match(r"^\W*(yes|no)\b", text, re.I)
    if m:
        return m.group(1).lower()
    phrase = _yes_no_phrase(text)
    if phrase is not None:
        return phrase
    if len(text.split()) <= 4:
        found = {w.lower() for w in re.findall(r"\b(yes|no)\b", text, re.I)}
        if len(found) == 1:
            return found.pop()
    return None


def _yes_no_phrase(text: str) -> str | None:
    hits = re.findall(r"\b(?i:answer)\b(?:\s+(?i:is|would\s+be|should\s+be))?\s*[:\-]?\s*\**\(?\s*(yes|no)\b", text, re.I)
    return hits[-1].lower() if hits else None


# --------------------------------------------------------------------------------------------- numbers

_NUM = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|[-+]?\.\d+")
_PHRASE_TAIL = re.compile(r"(?i:\b(?:final\s+answer|the\s+answer|answer)\b)(?:\s+(?i:is|would\s+be|should\s+be|="
                          r"|will\s+be))?\s*[:\-]?\s*")


def _last_phrase_tail(text: str) -> str | None:
    matches = list(_PHRASE_TAIL.finditer(text))
    if not matches:
        return None
    tail = text[matches[-1].end():]
    tail = re.split(r"\n|(?<=[^\d])\.(?:\s|$)", tail, maxsplit=1)[0]
    return tail.strip() or None


def _number_text(s: str) -> str:
    return re.sub(r"\s+", "", s.replace(",", ""))


def parse_number(text: str) -> str | None:
    """-> the number as written, without thousands separators ("3.43", "-2", "24/7"), or None."""
    text = _unwrap(text)
    core = re.sub(r"^[$€£]|%$|[.]$", "", text.strip()).strip()
    if _NUM.fullmatch(core):
        return _number_text(core)
    tail = _last_phrase_tail(text)
    if tail is not None:
        nums = _NUM.findall(tail)
        if nums:
            return _number_text(nums[0])
    nums = _NUM.findall(text)
    if len(nums) == 1 and len(text.split()) <= 12:
        return _number_text(nums[0])
    return None


def to_float(value: str | None) -> float | None:
    """"1,234.5" / "24/7" / "45%" / "$3" -> float; None when not a number."""
    if value is None:
        return None
    s = str(value).strip().replace(",", "")
    s = re.sub(r"^[$€£]", "", s)
    s = s[:-1] if s.endswith("%") else s
    s = s.rstrip(".")
    try:
        if "/" in s:
            a, b = s.split("/", 1)
            return float(a) / float(b)
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


# --------------------------------------------------------------------------------------------- text


def _clean_text(text: str) -> str:
    return _unwrap(text).strip().rstrip(".").strip()


def parse_text(text: str, tagged: bool) -> str | None:
    tail = _last_phrase_tail(text)
    if tail is not None and _clean_text(tail):
        return _clean_text(tail)
    cleaned = _clean_text(text)
    if not cleaned:
        return None
    if not tagged and len(cleaned.split()) > 30:
        return None
    return cleaned


# --------------------------------------------------------------------------------------------- official rules

# Prefix list of Video-MME's extract_characters_regex, as their script evaluates it: two pairs of entries are
# concatenated by missing commas.
VIDEOMME_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is" "The correct option is",
    "Best answer:" "Best option:",
)


def videomme_official_letter(response: str) -> str:
    """Video-MME's rule: the first upper-case A-D after removing their prefixes; "" when there is none."""
    s = response.strip()
    for prefix in VIDEOMME_PREFIXES:
        s = s.replace(prefix, "")
    m = re.search(r"[ABCD]", s)  # (their extra "more than 10 words and no letter" check gives the same "")
    return m.group(0) if m else ""


def _videomme_rule(output: str, item: Item) -> str | None:
    return videomme_official_letter(output) or None


def tempcompass_official(output: str, item: Item) -> str | None:
    """TempCompass's rule stage -> the label (or "yes"/"no") it settles on, or None when it defers to its LLM
    judge. The verdict `label == item.answer` equals theirs."""
    pred = output.replace("</s>", "")
    task = item.task
    if task == "multi-choice":
        raw_answer = item.extra.get("raw_answer", "")
        if pred == raw_answer:
            return item.answer
        if pred in ("A", "B", "C", "D"):
            return pred
        for letter in "ABCD":
            if pred.startswith(letter + ".") or pred.startswith(letter + ")"):
                return letter
        return None
    if task == "yes_no":
        low = pred.lower()
        if low.startswith("yes"):
            return "yes"
        if low.startswith("no"):
            return "no"
        return None
    if task == "caption_matching":
        return _tempcompass_caption_rule(pred.strip(), item)
    return None


def _tempcompass_caption_rule(pred: str, item: Item) -> str | None:
    lines = item.extra.get("raw_question", "").split("\n")[1:]
    raw_answer = item.extra.get("raw_answer", "")
    labels = list(item.options or {})
    if len(lines) != len(labels):
        return None
    matched: tuple[str, int] | None = None  # (kind, option position); later matches override, as theirs
    for k, line in enumerate(lines):
        if line == pred:
            matched = ("line", k)
    for k, line in enumerate(lines):
        sentence = line.split(": ")[1] if len(line.split(": ")) > 1 else None
        if sentence is not None and (sentence == pred or (") " in pred and sentence == pred.split(") ")[1])):
            matched = ("sentence", k)
    for k, line in enumerate(lines):
        ind = line.split(": ")[0]
        short = ind.replace("Sentence ", "").replace("Option ", "").replace("Caption ", "")
        for form in (ind, short):
            if form == pred or form == pred.replace(".", ""):
                matched = ("index", k)
    if matched is None:
        return None
    kind, k = matched
    if kind == "sentence":  # compared by text in their verdict: equal to the answer's sentence counts
        answer_sentence = raw_answer.split(": ")[1] if len(raw_answer.split(": ")) > 1 else None
        if lines[k].split(": ")[1] == answer_sentence:
            return item.answer
    return labels[k]


OFFICIAL_RULES = {"videomme": _videomme_rule, "tempcompass": tempcompass_official}
