"""The model, processor and request handling behind the lmms-eval class (no lmms-eval import here)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .generation import GenerationOptions, continuation_logprob, generate_texts, generation_options
from .media import encode, load_visuals
from .prompts import build_prompt, describe_request, final_answer
from .requests import GenerateRequest, LoglikelihoodRequest
from .settings import PluginSettings

def default_device() -> str:
    """cuda:LOCAL_RANK under a multi-process launcher, cuda on a GPU machine, else cpu."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local)}" if local is not None else "cuda"


@dataclass
class GenerationResult:
    """One generate_until result: what lmms-eval gets (`answer`), the raw output and how the answer was read."""

    answer: str
    output: str
    method: str
    prompt: str


class Backend:
    """The model, processor and request handling behind the lmms-eval class (no lmms-eval import here)."""

    def __init__(self, settings: PluginSettings, model=None, processor=None):
        import torch

        from videoktr.models.factory import load_model, load_processor, suppressed_token_ids

        self.settings = settings
        self.device = settings.device or default_device()
        if model is None:
            model = load_model(settings.pretrained, dtype=settings.dtype, device=self.device,
                               rope_positions=settings.rope_positions).eval()
        if processor is None:
            processor = load_processor(settings.pretrained, min_pixels=settings.min_pixels,
                                       max_pixels=settings.max_pixels)
        self.model, self.processor = model, processor
        self.suppress = suppressed_token_ids(processor.tokenizer)
        torch.manual_seed(settings.seed)

    # ------------------------------------------------------------------ generate_until

    def generate(self, requests: list[GenerateRequest], progress: Callable[[int], None] | None = None
                 ) -> list[GenerationResult]:
        """Results in request order. Requests with the same generation options are batched together,
        `batch_size` at a time; every request's media is read before its batch runs."""
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[GenerationOptions, list[int]] = {}
        for i, req in enumerate(requests):
            opts = generation_options(req.gen_kwargs, self.settings, describe_request(req.task, req.doc_id))
            groups.setdefault(opts, []).append(i)
        for opts, indices in groups.items():
            for start in range(0, len(indices), self.settings.batch_size):
                chunk = indices[start:start + self.settings.batch_size]
                for i, res in zip(chunk, self._generate_chunk([requests[i] for i in chunk], opts)):
                    results[i] = res
                if progress is not None:
                    progress(len(chunk))
        self._record(requests, results)
        return results  # type: ignore[return-value]

    def _generate_chunk(self, chunk: list[GenerateRequest], opts: GenerationOptions) -> list[GenerationResult]:
        prompted = [build_prompt(r.context, self.settings, r.task, r.doc_id) for r in chunk]
        media = [load_visuals(r.visuals, self.settings, describe_request(r.task, r.doc_id)) for r in chunk]
        outputs = generate_texts(self.model, self.processor, self.suppress, [p.prompt for p in prompted], media,
                                 opts)
        results = []
        for p, out in zip(prompted, outputs):
            answer, method = final_answer(out, p.item, self.settings.answer)
            results.append(GenerationResult(answer, out, method, p.prompt))
        return results

    def _record(self, requests: list[GenerateRequest], results: list) -> None:
        """Append every request's prompt, raw output and returned answer to `raw_output_file` (if set)."""
        if not self.settings.raw_output_file:
            return
        path = Path(self.settings.raw_output_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for req, res in zip(requests, results):
                row = {"task": req.task, "doc_id": req.doc_id, "prompt": res.prompt, "output": res.output,
                       "answer": res.answer, "method": res.method}
                f.write(json.dumps(row, default=str) + "\n")

    # ------------------------------------------------------------------ loglikelihood

    def loglikelihood(self, requests: list[LoglikelihoodRequest],
                      progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
        """(sum of the continuation's token log-probabilities, whether greedy decoding gives exactly it) per
        request. Requests sharing a context and document (the choices of one question) share one encoding."""
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault((req.context, req.task, str(req.doc_id), len(req.visuals) > 0), []).append(i)
        for indices in groups.values():
            first = requests[indices[0]]
            where = describe_request(first.task, first.doc_id)
            media = load_visuals(first.visuals, self.settings, where)
            prompt = first.context.replace("<image>", "")
            inputs = encode(self.processor, [prompt], [media], self.model.device)
            for i in indices:
                out[i] = continuation_logprob(self.model, self.processor.tokenizer, inputs,
                                              requests[i].continuation, where)
            if progress is not None:
                progress(len(indices))
        return out  # type: ignore[return-value]
