"""An lmms-eval model that evaluates any Qwen-VL checkpoint the way `videoktr eval` does.

    lmms-eval --model videoktr --model_args pretrained=DIR --tasks TASK

lmms-eval's own Qwen2.5-VL model hands frames to the processor without video metadata (every clip is then read
at the processor's default fps and the temporal positions of its frames collapse) and returns the raw output,
`<think>` block included. This model instead:

- samples each video with `videoktr.data.video.read_video` (`fps` frames a second, `min_frames` to `frames`,
  an even count) and passes the sampled fps to the processor as `video_metadata`, so each temporal group gets
  its own temporal position, exactly as `videoktr eval` (`eval/generate.py`) and training do;
- builds the user turn as our evaluator does (`prompt=reasoning`, the default): the task's context is read as a
  question plus option lines ("A. ...", "(A) ...", "A: ..."), the task's own direct-answer instructions
  (`ANSWER_INSTRUCTIONS`, e.g. "Answer with the option's letter from the given choices directly.") are dropped,
  and the question, "Options:" and the options are followed by the paper's reasoning instruction and the
  answer-type suffix (`text/prompts.py`). `prompt=task` keeps the task's context as it is;
- reads the answer with `videoktr.text.extract.extract` (last `<answer>` tag, then answer phrases) and returns it
  to the task (an option letter, yes/no, a number or a short text) so that the task's own parser scores the
  answer rather than the reasoning. An output whose answer cannot be read is returned without its reasoning
  (the text after `</think>`, or nothing when the reasoning was cut off), never the reasoning itself, so that a
  task's parser cannot pick a letter out of it. `answer=raw` returns the model's output unchanged.

Generation settings come from the task's `generation_kwargs`: `max_new_tokens`, `temperature` (0 = greedy;
sampling also needs the task not to say `do_sample: false`), `top_p`, `num_beams` and `until` (stop strings:
generation stops there and the text is cut before them). With `prompt=reasoning` a task's budget is raised to at
least `REASONING_MIN_NEW_TOKENS` (a direct-answer budget such as 16 tokens would end the reasoning before its
answer) and whitespace-only stop strings ("\\n\\n", lmms-eval's default delimiter) are dropped (reasoning has
paragraph breaks). The model arguments `max_new_tokens`, `temperature` and `top_p` override the task's values.

`loglikelihood` (multiple-choice tasks) scores the continuation after the chat template's assistant prefix,
with the request's visuals and the task's context unchanged, as the sum of its tokens' log-probabilities, and
hands lmms-eval its negative (`as_lmms_eval_scores`: lmms-eval 0.7.3 ranks options by the smallest value, as its
own models return a loss); `generate_until_multi_round` is not supported. lmms-eval is imported only when lmms-eval itself asks for the model class (`manifest`, the entry
point, and the module attribute `VideoKTR`); everything else here is plain code the test suite runs without
lmms-eval. Tested against lmms-eval 0.7.3 (README, "lmms-eval").

Parts: `settings` (the model arguments, checked), `prompts` (a task's context in, the user turn and the answer
out), `media` (visuals decoded and encoded), `generation` (generation settings, batched generation, continuation
log-probabilities), `requests` (lmms-eval's request arguments resolved), `backend` (model, processor, requests);
this module holds the lmms-eval glue and re-exports the parts' names.
"""

from __future__ import annotations

from .backend import Backend, default_device
from .generation import (GenerationOptions, as_lmms_eval_scores, continuation_logprob, cut_at_stop, generate_texts,
                         generation_options, hf_generate_kwargs)
from .media import Media, encode, load_visuals
from .prompts import (ANSWER_INSTRUCTIONS, ParsedContext, PromptedRequest, answer_kind, build_prompt,
                      describe_request, final_answer, parse_context, strip_answer_instructions, unparsed_answer)
from .requests import GenerateRequest, LoglikelihoodRequest, resolve_generate_args, resolve_loglikelihood_args
from .settings import (ANSWER_MODES, ANSWER_TYPE_CHOICES, CLASS_NAME, ENTRY_POINT_GROUP, MODEL_NAME, PROMPT_MODES,
                       REASONING_MIN_NEW_TOKENS, TASK_DEFAULT_MAX_NEW_TOKENS, PluginError, PluginMediaError,
                       PluginSettings)

__all__ = [  # the plugin's names, from its parts
    "ANSWER_INSTRUCTIONS",
    "ANSWER_MODES",
    "ANSWER_TYPE_CHOICES",
    "Backend",
    "CLASS_NAME",
    "ENTRY_POINT_GROUP",
    "GenerateRequest",
    "GenerationOptions",
    "LoglikelihoodRequest",
    "MODEL_NAME",
    "Media",
    "PROMPT_MODES",
    "ParsedContext",
    "PluginError",
    "PluginMediaError",
    "PluginSettings",
    "PromptedRequest",
    "REASONING_MIN_NEW_TOKENS",
    "TASK_DEFAULT_MAX_NEW_TOKENS",
    "answer_kind",
    "as_lmms_eval_scores",
    "build_prompt",
    "continuation_logprob",
    "cut_at_stop",
    "default_device",
    "describe_request",
    "encode",
    "final_answer",
    "generate_texts",
    "generation_options",
    "hf_generate_kwargs",
    "load_visuals",
    "parse_context",
    "resolve_generate_args",
    "resolve_loglikelihood_args",
    "strip_answer_instructions",
    "unparsed_answer",
]


# -------------------------------------------------------------------------------------- lmms-eval glue


def manifest():
    """The entry point lmms-eval calls (group `lmms_eval.models`): the manifest naming our model class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.{CLASS_NAME}")


_MODEL_CLASS = None


def model_class():
    """The lmms subclass (built once; importing this module does not import lmms-eval)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        _MODEL_CLASS = _build_model_class()
    return _MODEL_CLASS


def __getattr__(name: str):
    if name == CLASS_NAME:
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_model_class():
    try:
        from lmms_eval.api.model import lmms
    except ImportError as exc:
        raise ImportError(f"the {MODEL_NAME} lmms-eval model needs lmms-eval in the same environment "
                          "(pip install lmms-eval==0.7.3; see README, 'lmms-eval')") from exc

    class VideoKTR(lmms):
        """videoktr's frame sampling, fps metadata, prompts and answer extraction for any Qwen-VL checkpoint."""

        is_simple = True

        def __init__(self, **model_args):
            super().__init__()
            self.settings = PluginSettings.from_model_args(**model_args)
            self.backend = Backend(self.settings)

        @property
        def model(self):
            return self.backend.model

        @property
        def processor(self):
            return self.backend.processor

        @property
        def tokenizer(self):
            return self.backend.processor.tokenizer

        @property
        def device(self):
            return self.backend.model.device

        @property
        def batch_size(self):
            return self.settings.batch_size

        def _progress(self, total: int, desc: str):
            from tqdm import tqdm

            return tqdm(total=total, disable=self.rank != 0, desc=desc)

        def generate_until(self, requests) -> list[str]:
            resolved = [resolve_generate_args(r.args, self.task_dict) for r in requests]
            bar = self._progress(len(resolved), "videoktr generate")
            results = self.backend.generate(resolved, progress=bar.update)
            bar.close()
            for req, res in zip(resolved, results):
                self.cache_hook.add_partial("generate_until", (req.context, req.gen_kwargs), res.answer)
            return [res.answer for res in results]

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            resolved = [resolve_loglikelihood_args(r.args, self.task_dict) for r in requests]
            bar = self._progress(len(resolved), "videoktr loglikelihood")
            scores = self.backend.loglikelihood(resolved, progress=bar.update)
            bar.close()
            pairs = as_lmms_eval_scores(scores)
            for req, pair in zip(resolved, pairs):
                self.cache_hook.add_partial("loglikelihood", (req.context, req.continuation), pair)
            return _survive_unwrap(pairs)

        def generate_until_multi_round(self, requests) -> list[str]:
            raise NotImplementedError(f"--model {MODEL_NAME} does not implement generate_until_multi_round "
                                      "(multi-round tasks); use a generate_until or multiple_choice task")

    def _survive_unwrap(scores):
        """The (log-probability, greedy) pairs in a form lmms-eval's evaluator keeps. lmms-eval 0.7.3 passes every
        response through `unwrap_generation_output`, which turns anything but a string or a GenerationResult into
        its text, so a plain pair reaches `multiple_choice` scoring as "(-1.2, False)" and fails there; its
        GenerationResult is unwrapped to its `text` field unchanged, so the pairs travel in that."""
        try:
            from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
        except ImportError:  # an lmms-eval without the wrapper keeps the pairs as they are
            return scores
        if unwrap_generation_output((0.0, True))[0] == (0.0, True):
            return scores
        return [GenerationResult(text=pair) for pair in scores]

    VideoKTR.__module__ = __name__
    VideoKTR.__qualname__ = CLASS_NAME
    return VideoKTR
