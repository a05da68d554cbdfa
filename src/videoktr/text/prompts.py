"""Prompts: the paper's reasoning prompt (default) and a per-benchmark "official" direct-answer prompt.

`reasoning` (default; the prompt Video-R1 evaluates with and Video-KTR inherits): the question, then "Options:"
and one option a line, then an instruction to reason inside <think></think> like a person thinking aloud and to
give the final answer inside <answer></answer>, then a suffix saying what the answer must be for the item's
answer type (one option letter, yes/no, a caption label, a number, a short text).
Training on Video-R1 rows uses the same instruction (`reasoning_text`; see videoktr.data.videor1), with two
extra suffixes for its OCR (a transcription) and free-form (free text) rows.

`plain`: the question (and "Options:" with one option a line) and nothing else, as the synthetic world's rows
are trained (`videoktr.world`); the default for a model whose videoktr.json records it
(`videoktr.models.info`), so that eval prompts it as `videoktr explain` and its training run did.

`official`: the answer format each benchmark's own evaluation asks for (direct answer, no reasoning tags; MMVU's
asks for step-by-step reasoning ending in "the final answer is: X"). The wording here is our own paraphrase of
each format, not the benchmarks' text, so numbers obtained with it are close to, not identical with, the
benchmarks' published protocols.

The media placeholder (video or image) is not part of the text: the generator puts it before the text.
"""

from __future__ import annotations

from .item import Item

PROMPT_STYLES = ("reasoning", "official", "plain")

REASONING_INSTRUCTION = (
    "Work through this question the way a person would when thinking hard about it: talk it over with "
    "yourself in natural language (for example \"let me think\", \"hmm\", \"wait\", \"so far I see that\"), "
    "and check your reasoning again before you settle on an answer. Write all of your reasoning between "
    "<think> and </think>, and then write your final answer between <answer> and </answer>."
)

ANSWER_SUFFIX = {
    "mc": " Inside <answer> </answer> give only the letter of the option you choose (for example A, B or C).",
    "yes_no": " Inside <answer> </answer> give only yes or no.",
    "caption_matching": " Inside <answer> </answer> give only the label of the matching caption, exactly as "
                        "it is written before the caption.",
    "numeric": " Inside <answer> </answer> give only the number (for example 7 or 2.45).",
    "regression": " Inside <answer> </answer> give only the number (for example 7 or 2.45).",
    "open": " Inside <answer> </answer> give only a short text answer.",
    "relaxed": " Inside <answer> </answer> give only a single word or number.",
    # Training-only kinds (Video-R1 rows, see videoktr.data.videor1); no eval answer type uses them.
    "ocr": " Inside <answer> </answer> give only the text you read, transcribed exactly as it appears.",
    "free_form": " Inside <answer> </answer> give your answer as free text.",
}


def format_question(question: str, options: dict[str, str] | None = None, sep: str = ". ") -> str:
    """`question`, then "Options:" and one "label<sep>text" per line when there are options."""
    text = question
    if options:
        lines = [f"{label}{sep}{opt}" for label, opt in options.items()]
        text = text + "\nOptions:\n" + "\n".join(lines)
    return text


def question_with_options(item: Item) -> str:
    """The question, then "Options:" and one "label. text" (or "label: text" for captions) per line."""
    sep = ": " if item.answer_type == "caption_matching" else ". "
    return format_question(item.question, item.options, sep)


def reasoning_text(question_block: str, kind: str) -> str:
    """The reasoning prompt around an already formatted question: the instruction plus the suffix of `kind`
    (a key of ANSWER_SUFFIX). Shared by evaluation (`reasoning_prompt`) and training (Video-R1 rows)."""
    if kind not in ANSWER_SUFFIX:
        raise ValueError(f"unknown answer kind {kind!r}; choose from {', '.join(ANSWER_SUFFIX)}")
    return f"{question_block}\n{REASONING_INSTRUCTION}{ANSWER_SUFFIX[kind]}"


def plain_text(question_block: str) -> str:
    """The plain prompt around an already formatted question: the question block itself. Shared by evaluation
    (`build_prompt(item, "plain")`) and `videoktr explain --prompt plain`."""
    return question_block


def reasoning_prompt(item: Item) -> str:
    return reasoning_text(question_with_options(item), item.answer_type)


def _letter_list(item: Item) -> str:
    labels = list(item.options or {})
    return ", ".join(labels[:-1]) + f" or {labels[-1]}" if len(labels) > 1 else "".join(labels)


def official_prompt(item: Item) -> str:
    b, kind = item.benchmark, item.answer_type
    body = question_with_options(item)
    if b == "videomme":
        return ("Choose the best answer to this multiple-choice question about the video. Reply with the "
                f"letter ({_letter_list(item)}) of the correct option only.\n{body}\nThe best answer is:")
    if b == "tempcompass":
        if kind == "yes_no":
            return f"{item.question}\nAnswer yes or no directly:"
        return f"{body}\nGive the best option directly:"
    if b == "mmvu" and kind == "mc":
        return (f"{body}\nSolve the multiple-choice question step by step, explaining your reasoning first. "
                "End with a line of the form 'Therefore, the final answer is: X', where X is the letter of "
                "one option.")
    if b == "mmvu":
        return (f"{item.question}\nSolve the question step by step, explaining your reasoning first. End with "
                "a line of the form 'Therefore, the final answer is: ANSWER' with a short answer.")
    if b == "video_holmes":
        return (f"{body}\nThink about the film's plot before answering: reason inside <think> </think>, then "
                "give only the letter of the correct option inside <answer> </answer>.")
    if b == "chartqa" or kind == "relaxed":
        return f"{item.question}\nAnswer with a single word or number."
    if kind in ("mc", "caption_matching"):
        return f"{body}\nAnswer with the letter of the correct option directly."
    if kind in ("numeric", "regression"):
        return f"{item.question}\nAnswer with a single number."
    if kind == "yes_no":
        return f"{item.question}\nAnswer yes or no."
    return f"{item.question}\nAnswer with a single word or phrase."


def build_prompt(item: Item, style: str = "reasoning") -> str:
    """The user-turn text for `item` in prompt `style` ("reasoning", "official" or "plain")."""
    if style == "reasoning":
        return reasoning_prompt(item)
    if style == "official":
        return official_prompt(item)
    if style == "plain":
        return plain_text(question_with_options(item))
    raise ValueError(f"unknown prompt style {style!r}; choose from {', '.join(PROMPT_STYLES)}")
