"""Generation settings from a task's `generation_kwargs`, batched generation, and the log-probability of a
continuation (`loglikelihood`)."""

from __future__ import annotations

from dataclasses import dataclass

from .media import Media, encode
from .settings import PluginError, PluginSettings, REASONING_MIN_NEW_TOKENS, TASK_DEFAULT_MAX_NEW_TOKENS

@dataclass(frozen=True)
class GenerationOptions:
    """Resolved generation settings of one request; requests with equal options share a batch."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    num_beams: int
    until: tuple[str, ...]


def generation_options(gen_kwargs: dict | None, settings: PluginSettings, where: str = "lmms-eval request"
                       ) -> GenerationOptions:
    """A task's `generation_kwargs` with the model arguments applied (see the module docstring)."""
    gk = dict(gen_kwargs or {})
    until = gk.get("until")
    if until is None:
        until = []
    elif isinstance(until, str):
        until = [until]
    elif not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
        raise PluginError(f"{where}: generation_kwargs until must be a string or a list of strings, got {until!r}")
    reasoning = settings.prompt == "reasoning"
    stops = tuple(u for u in until if u and not (reasoning and not u.strip()))
    if settings.max_new_tokens is not None:
        budget = settings.max_new_tokens
    else:
        task_budget = gk.get("max_new_tokens")
        budget = int(task_budget) if task_budget is not None else TASK_DEFAULT_MAX_NEW_TOKENS
        if reasoning:
            budget = max(budget, REASONING_MIN_NEW_TOKENS)
    if settings.temperature is not None:
        temperature = settings.temperature
        do_sample = temperature > 0
    else:
        temperature = float(gk.get("temperature") or 0.0)
        do_sample = temperature > 0 and gk.get("do_sample") is not False
    top_p = settings.top_p if settings.top_p is not None else gk.get("top_p")
    top_p = 1.0 if top_p is None else float(top_p)
    num_beams = int(gk.get("num_beams") or 1)
    return GenerationOptions(budget, do_sample, temperature if do_sample else 0.0, top_p, num_beams, stops)


def hf_generate_kwargs(opts: GenerationOptions, suppress: list[int], tokenizer) -> dict:
    """Keyword arguments for `model.generate` (vision placeholder tokens are never sampled)."""
    kwargs: dict = dict(max_new_tokens=opts.max_new_tokens, suppress_tokens=suppress or None,
                        num_beams=opts.num_beams, do_sample=opts.do_sample)
    if opts.do_sample:
        kwargs.update(temperature=opts.temperature, top_p=opts.top_p)
    if opts.until:
        kwargs.update(stop_strings=list(opts.until), tokenizer=tokenizer)
    return kwargs


def cut_at_stop(text: str, until: tuple[str, ...] | list[str]) -> str:
    """`text` up to the earliest stop string (generation may run a token past it)."""
    cut = len(text)
    for stop in until:
        i = text.find(stop) if stop else -1
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def generate_texts(model, processor, suppress: list[int], prompts: list[str], media: list[Media],
                   opts: GenerationOptions) -> list[str]:
    """One batched `model.generate` call; the decoded continuations, cut at the stop strings."""
    import torch

    inputs = encode(processor, prompts, media, model.device)
    with torch.no_grad():
        out = model.generate(**inputs, **hf_generate_kwargs(opts, suppress, processor.tokenizer))
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [cut_at_stop(t, opts.until) for t in texts]


def as_lmms_eval_scores(scores: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
    """(log-probability, greedy) pairs in lmms-eval's convention: (negative log-likelihood, greedy). lmms-eval
    0.7.3 picks a multiple-choice answer by the *smallest* value `loglikelihood` returns (`np.argmin`, because its
    own models return a loss there), so a log-probability would select the least likely option."""
    return [(-logprob, greedy) for logprob, greedy in scores]


def continuation_logprob(model, tokenizer, inputs, continuation: str, where: str = "lmms-eval request"
                         ) -> tuple[float, bool]:
    """Score `continuation` appended (as its own tokens) after the encoded prompt `inputs` (batch of one):
    (sum of log p(token | everything before), every token is the argmax)."""
    import torch

    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not cont:
        raise PluginError(f"{where}: the continuation {continuation!r} has no tokens to score")
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise PluginError(f"{where}: continuation_logprob scores one prompt at a time, got {ids.shape[0]}")
    n_prompt = ids.shape[1]
    cont_ids = torch.tensor([cont], dtype=ids.dtype, device=ids.device)
    full = dict(inputs)
    for key, value in inputs.items():
        if torch.is_tensor(value) and value.dim() == 2 and tuple(value.shape) == tuple(ids.shape):
            # per-token tensors: ids get the continuation, the attention mask ones, type ids (text) zeros
            fill = cont_ids if key == "input_ids" else (
                torch.ones_like(cont_ids, dtype=value.dtype) if key == "attention_mask"
                else torch.zeros_like(cont_ids, dtype=value.dtype))
            full[key] = torch.cat([value, fill], dim=1)
    with torch.no_grad():
        logits = model(**full).logits[0, n_prompt - 1:-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = cont_ids[0]
    total = logp.gather(1, target[:, None]).sum().item()
    greedy = bool((logits.argmax(dim=-1) == target).all().item())
    return float(total), greedy
