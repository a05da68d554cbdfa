"""The synthetic video world, the testbed the default run and every study stand on: its clips, questions, token
labels and rewards, the warm start on it, its RL-prompt filter, its metrics and the default experiment (`run`).
May import: train, filter, attribution, eval, data, rewards, text, models, core (and never be imported by them).

The world: clips of coloured shapes appearing one after another, questions about them, and ground-truth token
roles computed by construction.

Package layout (the world's own public names are re-exported here; callers use `videoktr.world.NAME`):
`config` (palette, families, kinds, `WorldConfig`, the style presets), `render` (clips), `questions` (question
logic and reference responses), `long_cot` and `sampled_cot` (the long reference styles), `labels`
(counterfactuals and the label oracles), `build` (rows, files, clips, processor inputs, tokenizer corpus),
`rewards` (accuracy, format); on top of them `metrics` (held-out accuracy, attribution quality, paired gain),
`warmstart` (the supervised warm start, cached), `filter` (the RL-prompt difficulty filter) and `run` (the
default experiment behind `videoktr train` without data). Those four import torch and train and are imported
on use, not here.

Styles (`WorldConfig.style`): "short" (the default, described below), "long_cot" (`long_cot_config()`: the same
clips, references of 100-250 tokens that walk through the clip with filler and restatement, no text-answerable
family; `long_cot` and docs/world-long-cot.md) and "sampled_cot" (`sampled_cot_config()`: long_cot's questions,
references of 84-128 tokens whose every filler word, optional clause and clause order is drawn independently per
row and slot; `sampled_cot` and docs/world-sampled-cot.md; its token roles add "sampled"). The label definitions below hold for both. In long_cot, a
count_shape question's shape is drawn after its answer (`questions.count_shape_log_weights`), so that "How many
circles?" is not answerable from its text (in the short world the shape is uniform and the answer mostly 0 or 1).

Clips. A clip has `frames` frames (default 8 = 4 temporal groups of 2 frames, the model's temporal patch).
Each temporal group g (frames 2g and 2g+1) is either blank (background only) or shows ONE event: a shape of
one colour, centred. Colours within a clip are distinct; shapes may repeat. Permuting the temporal groups of
a clip therefore permutes its event order and nothing else. Clips are rendered with numpy, written as real
mp4 files (`data.video.write_video`) and decoded back with `data.video.read_video`, the loader real data uses.

A clip's content is its *layout*: a tuple with one entry per temporal group, None (blank) or (colour, shape).

Question families (`FAMILIES`), kinds (`KINDS`; `WorldConfig.kinds` picks those in use) and reference
responses (`<think>...</think><answer>...</answer>`; answers are words or numbers, never option letters):
- order (answer: a colour; order-dependent). Kinds: first, last, after ("Which colour appeared right after
  the blue shape?"). Reasoning narrates every event in order: "first red circle, then blue square, then
  green triangle."
- presence (answer: a word; order-independent). Kinds: shape_of ("What shape was the blue one?"), colour_of
  ("What colour was the square?", the shape appears exactly once), appeared ("Did a blue shape appear?",
  yes/no; off by default: the small model stays at chance on it). Reasoning lists the events sorted by
  colour name, so it does not depend on their order: "by colour: blue square, red circle, white triangle."
- count (answer: a number, problem_type "numerical"). Kinds: count ("How many shapes appeared?"), count_shape
  ("How many circles appeared?"); reasoning is a fixed phrase ("counting the shapes."), so the number
  itself is where the video enters the text.
- text (control; answer determined by the question text alone): "Which colour is named in this question:
  red?" -> "the question names red."
What a small model learns in a warm start (measured): the narrations and listings, first/last/count/named
within a few hundred steps; the look-ups (after, shape_of, colour_of, count_shape) only partly, which keeps
accuracy below ceiling.

Token labels (`token_labels`), defined the way teacher-forced attribution sees a token: let x be the token
ids of the row's reference response (+ the end-of-turn token) and R(c) those of the reference response to the
SAME question for another clip c for which the question is well-posed (e.g. "after X" needs X present and not
last; "colour of the square" needs exactly one square).
- vision (prefix-conditional): some clip c with other content has R(c)[:t] == x[:t] and R(c)[t] != x[t].
  Exact: `LabelIndex` holds the sorted token ids of the reference of EVERY event sequence of the world (a
  response depends on a clip only through its event sequence) and checks the range sharing x[:t].
- order (prefix-conditional): the same over the ORDER counterfactuals: every arrangement of the row's
  temporal groups (same events, same blanks) for which the question is well-posed. Exact.
- vision_uncond / order_uncond (unconditional): token t of x is left unmatched by the alignment of x with
  some counterfactual's R(c) (`difflib.SequenceMatcher(None, x, R(c), autojunk=False)`'s matching blocks):
  the token's content changes in some counterfactual, wherever the change first entered the text. A colour
  copied from the reasoning into the answer is vision_uncond but not vision. vision_uncond uses a sample of
  content counterfactuals (`vision_counterfactuals`: every order counterfactual, every close edit of the
  event sequence and `counterfactual_samples` random layouts, seeded by the row), or every layout with
  `exhaustive=True` (small worlds; tests compare the two).
Tests check the labels against brute-force enumeration on a small world and by hand on examples.

Rows follow the Video-R1 JSON schema (problem_id, problem, data_type "video", problem_type, options [],
solution "<answer>X</answer>", path relative to the world directory, data_source "synthetic", process
"<think>...</think>") plus: family, kind, question (the kind's parameters), layout (list of [colour, shape]
or null per temporal group), events (list of {group, colour, shape}), answer, chance (probability of a
uniform guess over the kind's answer set), response (the warm-start target: process + solution, or for a
`reference_noise` row the reference of another clip) and noisy.
"""

from .config import (FAMILIES, GENERATOR_VERSION, KINDS, LONG_COT_COMPLETION_TOKENS, LONG_COT_FAMILY_MIX,
                     LONG_COT_KINDS, PALETTE, SAMPLED_COT_COMPLETION_TOKENS, SHAPES, STYLES, Layout, WorldConfig,
                     long_cot_config, sampled_cot_config, world_config)
from .labels import (LabelIndex, all_layouts, all_sequences, branch_counterfactuals, label_index, label_rows,
                     order_counterfactuals,
                     prefix_labels, question_key, single_edits, token_labels, unconditional_labels,
                     vision_counterfactuals)
from .long_cot import PHRASINGS
from .questions import (chance_of, events_of, family_of, format_response, question_text, reference,
                        reference_response, row_layout, sample_layout, sample_question, well_posed)
from .render import decode_layout, render_clip
from .rewards import accuracy_reward, answer_of, format_reward, is_correct, normalise_answer
from .build import (WorldPaths, chat_prompt, corpus, encode_rows, generate_world, load_clip, load_clips,
                    load_world_config, make_row, prompt_text, read_rows, sample_rows, vocabulary)

__all__ = [
    "FAMILIES", "GENERATOR_VERSION", "KINDS", "LONG_COT_COMPLETION_TOKENS", "LONG_COT_FAMILY_MIX", "LONG_COT_KINDS",
    "PALETTE", "SAMPLED_COT_COMPLETION_TOKENS", "SHAPES", "STYLES", "Layout", "WorldConfig", "long_cot_config",
    "sampled_cot_config", "world_config",
    "LabelIndex", "all_layouts", "all_sequences", "branch_counterfactuals", "label_index", "label_rows", "order_counterfactuals",
    "prefix_labels", "question_key", "single_edits", "token_labels", "unconditional_labels", "vision_counterfactuals",
    "PHRASINGS",
    "chance_of", "events_of", "family_of", "format_response", "question_text", "reference", "reference_response",
    "row_layout", "sample_layout", "sample_question", "well_posed",
    "decode_layout", "render_clip",
    "accuracy_reward", "answer_of", "format_reward", "is_correct", "normalise_answer",
    "WorldPaths", "chat_prompt", "corpus", "encode_rows", "generate_world", "load_clip", "load_clips",
    "load_world_config", "make_row", "prompt_text", "read_rows", "sample_rows", "vocabulary",
]
