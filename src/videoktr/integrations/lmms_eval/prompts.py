"""A task's context in, the user turn out (question, options and the reasoning instruction), and the answer
read back from the output for the task's own parser."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from videoktr.text.extract import clean_output, extract, last_answer_tag
from videoktr.text.item import Item
from videoktr.text.prompts import format_question, reasoning_text

from .settings import PluginError, PluginSettings

# Sentences of a task's context that ask for a direct answer. With prompt=reasoning they are removed: the
# reasoning instruction replaces them. Each is matched at the start of a line or sentence, case-insensitively,
# and may run over one line break.
ANSWER_INSTRUCTIONS = (
    r"do not (?:generate|give|output|provide|include) any (?:intermediate )?(?:reasoning|explanation)[^.\n]*\.?",
    (r"(?:please )?(?:answer|respond|reply)\b[^.\n]*(?:\n[^.\n]*)?\b(?:directly|only|single word|single letter)\b"
     r"[^.\n]*(?:\n[^.\n]*)?(?:\.|:|$)"),
    r"(?:select|choose|pick) the best (?:answer|option) (?:to|for) the following[^.\n]*\.?",
    r"the best (?:answer|option) is\s*:?[ \t]*$",
    r"answer\s*:[ \t]*$",
)
_INSTRUCTION_RE = re.compile(r"(?:^|(?<=[.!?:])[ \t]+)[ \t]*(?:" + "|".join(ANSWER_INSTRUCTIONS) + r")",
                             re.I | re.M)
_OPTION_RE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s*(\S.*?)\s*$")
_OPTIONS_HEADER_RE = re.compile(r"^\s*(?:options|choices)\s*:\s*$", re.I)
_QUESTION_LABEL_RE = re.compile(r"^\s*(?:question|q)\s*:\s*", re.I)
_YES_NO_RE = re.compile(r"\byes or no\b", re.I)


@dataclass(frozen=True)
class ParsedContext:
    """A task's context read as a question (all lines that are not options) and its options (None if none)."""

    question: str
    options: dict[str, str] | None


def strip_answer_instructions(text: str) -> str:
    """`text` without the sentences that ask for a direct answer (`ANSWER_INSTRUCTIONS`)."""
    return _INSTRUCTION_RE.sub("", text)


def _option_run(lines: list[str]) -> tuple[int, dict[str, str]] | None:
    """(index of the first line, options) of the first run of lines labelled A, B, C, ... (at least two)."""
    for start, line in enumerate(lines):
        m = _OPTION_RE.match(line)
        if not m or (m.group(1) or m.group(2)) != "A":
            continue
        options: dict[str, str] = {}
        for offset, nxt in enumerate(lines[start:]):
            m = _OPTION_RE.match(nxt)
            label = (m.group(1) or m.group(2)) if m else None
            if label != chr(ord("A") + offset):
                break
            options[label] = m.group(3)
        if len(options) >= 2:
            return start, options
    return None


def parse_context(context: str) -> ParsedContext:
    """Split a context into the question text and the options ("A. x", "(A) x", "A) x", "A: x" lines). A line
    "Options:" right before the options and a leading "Question:" label are dropped; blank lines are dropped."""
    lines = context.replace("<image>", "").splitlines()
    run = _option_run(lines)
    options = None
    if run is not None:
        start, options = run
        before = lines[:start]
        if before and _OPTIONS_HEADER_RE.match(before[-1]):
            before = before[:-1]
        lines = before + lines[start + len(options):]
    kept = [line.strip() for line in lines if line.strip()]
    if kept:
        kept[0] = _QUESTION_LABEL_RE.sub("", kept[0], count=1)
    return ParsedContext("\n".join(line for line in kept if line), options)


def answer_kind(context: str, parsed: ParsedContext, setting: str, where: str) -> str:
    """The answer type used to phrase the prompt's suffix and to read the answer: `setting` unless "auto";
    "auto" is "mc" with options, "yes_no" when the context asks for yes or no, else "open"."""
    if setting == "auto":
        if parsed.options:
            return "mc"
        return "yes_no" if _YES_NO_RE.search(context) else "open"
    if setting == "mc" and not parsed.options:
        raise PluginError(f"{where}: answer_type=mc but the context has no option lines (A. ..., B. ...): "
                          f"{context[:200]!r}")
    return setting


@dataclass(frozen=True)
class PromptedRequest:
    """The user-turn text for a request and the Item the answer is read against."""

    prompt: str
    item: Item


def build_prompt(context: str, settings: PluginSettings, task: str | None = None, doc_id: Any = None
                 ) -> PromptedRequest:
    """The user turn and the extraction Item for one lmms-eval context (see the module docstring)."""
    where = describe_request(task, doc_id)
    reasoning = settings.prompt == "reasoning"
    text = strip_answer_instructions(context) if reasoning else context
    parsed = parse_context(text)
    kind = answer_kind(context, parsed, settings.answer_type, where)
    options = parsed.options if kind == "mc" else None
    if reasoning:
        prompt = reasoning_text(format_question(parsed.question, options), kind)
    else:
        prompt = context.replace("<image>", "")
    item = Item(id=str(doc_id), benchmark=f"lmms_eval:{task or ''}", question=parsed.question, answer="",
                answer_type=kind, options=options, task=task)
    return PromptedRequest(prompt, item)


def describe_request(task: str | None, doc_id: Any) -> str:
    """"task T doc D", for messages."""
    return f"lmms-eval task {task!r} doc {doc_id!r}" if task is not None else f"lmms-eval request {doc_id!r}"


def unparsed_answer(output: str) -> str:
    """What to hand a task when no answer can be read: the content of the last <answer> tag, else the text after
    the last </think>, else nothing when the output reasons without closing (cut off), else the output."""
    text = clean_output(output)
    tagged = last_answer_tag(text)
    if tagged is not None:
        return tagged.strip()
    parts = re.split(r"</think>", text, flags=re.I)
    if len(parts) > 1:
        return parts[-1].strip()
    if re.search(r"<think>", text, re.I):
        return ""
    return text.strip()


def final_answer(output: str, item: Item, mode: str = "extract") -> tuple[str, str]:
    """(text returned to lmms-eval, how it was read). mode "raw": the output itself."""
    if mode == "raw":
        return output, "raw"
    found = extract(output, item)
    if found.value is not None:
        return found.value, found.method
    return unparsed_answer(output), found.method
