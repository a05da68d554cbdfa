"""lmms-eval's request arguments (`Instance.args`) resolved into requests with their document's visuals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .prompts import describe_request
from .settings import MODEL_NAME, PluginError

@dataclass
class GenerateRequest:
    """An lmms-eval `generate_until` request with its document's visuals resolved."""

    context: str
    gen_kwargs: dict
    visuals: list
    task: str | None = None
    doc_id: Any = None


@dataclass
class LoglikelihoodRequest:
    """An lmms-eval `loglikelihood` request: continuation scored after the context (with visuals)."""

    context: str
    continuation: str
    visuals: list
    task: str | None = None
    doc_id: Any = None


def _doc(task_dict: dict, task: str, split: str, doc_id: Any):
    try:
        return task_dict[task][split][doc_id]
    except (KeyError, IndexError, TypeError) as exc:
        raise PluginError(f"{describe_request(task, doc_id)}: no document {doc_id!r} in split {split!r} of the "
                          f"task's data ({type(exc).__name__}: {exc})") from exc


def _visuals_of(doc_to_visual: Callable | None, doc) -> list:
    if doc_to_visual is None:
        return []
    visuals = doc_to_visual(doc)
    if visuals is None:
        return []
    return list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]


def resolve_generate_args(args: tuple, task_dict: dict) -> GenerateRequest:
    """An `Instance.args` of a `generate_until` request, (context, gen_kwargs, doc_to_visual, doc_id, task,
    split), with the document's visuals looked up in `task_dict[task][split]`."""
    if len(args) != 6:
        raise PluginError(f"generate_until request with {len(args)} arguments; --model {MODEL_NAME} expects "
                          "(context, generation_kwargs, doc_to_visual, doc_id, task, split)")
    context, gen_kwargs, doc_to_visual, doc_id, task, split = args
    visuals = _visuals_of(doc_to_visual, _doc(task_dict, task, split, doc_id)) if doc_to_visual else []
    return GenerateRequest(context, dict(gen_kwargs or {}), visuals, task, doc_id)


def resolve_loglikelihood_args(args: tuple, task_dict: dict) -> LoglikelihoodRequest:
    """An `Instance.args` of a `loglikelihood` request: (context, continuation or doc_to_target, doc_to_visual,
    doc_id, task, split), or (context, continuation) for the unconditional scores of `acc_mutual_info`."""
    if len(args) == 2:
        return LoglikelihoodRequest(args[0], args[1], [])
    if len(args) != 6:
        raise PluginError(f"loglikelihood request with {len(args)} arguments; --model {MODEL_NAME} expects "
                          "(context, continuation, doc_to_visual, doc_id, task, split)")
    context, continuation, doc_to_visual, doc_id, task, split = args
    doc = _doc(task_dict, task, split, doc_id)
    if callable(continuation):
        continuation = continuation(doc)
    return LoglikelihoodRequest(context, str(continuation), _visuals_of(doc_to_visual, doc), task, doc_id)
