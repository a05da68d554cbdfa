"""The lmms-eval model's request handling, on CPU with the tiny model and without lmms-eval installed: settings
from `--model_args`, prompts as `videoktr eval` builds them, frames sampled with their fps reaching the
processor, generation settings taken from the task, `<answer>` extraction, loglikelihood, errors that name the
file. lmms-eval's own classes are exercised by `bench/lmms_eval_plugin.py` in lmms-eval's environment."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from videoktr.data.video import write_video
from videoktr.eval.benchmarks.base import Item
from videoktr.text.prompts import build_prompt as evaluator_prompt
from videoktr.integrations import lmms_eval as plug

ROOT = Path(__file__).resolve().parents[2]


def settings(tiny_dir="unused", **kw) -> plug.PluginSettings:
    return plug.PluginSettings.from_model_args(pretrained=str(tiny_dir), device="cpu", **kw)


@pytest.fixture()
def backend(tiny, tiny_dir):
    model, processor = tiny
    return plug.Backend(settings(tiny_dir, frames=16, max_new_tokens=4), model=model, processor=processor)


@pytest.fixture()
def clip_4fps(tmp_path) -> Path:
    """A 4-second clip at 4 fps (16 frames): our sampler keeps 8 frames, 2 a second."""
    rng = np.random.default_rng(0)
    return write_video(tmp_path / "clip.mp4", rng.integers(0, 256, (16, 56, 56, 3), dtype=np.uint8), fps=4.0)


# Contexts laid out as lmms-eval's video tasks lay them out (instruction, question, option lines, instruction),
# in our own words; bench/lmms_eval_plugin.py checks lmms-eval's own VideoMME and MMVU contexts.
MC_CONTEXT = ("Pick the best answer for the following multiple-choice question about the clip. Reply with only "
              "the letter (A, B, C or D) of the right option.\nWhich shape appears first?\nA. a red circle"
              "\nB. a blue square\nC. a green star\nD. a white cross\nAnswer directly with the letter of the "
              "right option.")


def mc_item(**kw) -> Item:
    fields = dict(id="0", benchmark="x", question="Which shape appears first?", answer="B", answer_type="mc",
                  options={"A": "a red circle", "B": "a blue square", "C": "a green star", "D": "a white cross"})
    fields.update(kw)
    return Item(**fields)


# ---------------------------------------------------------------------------------------- registration


def test_entry_point_names_the_manifest_function():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    eps = project["project"]["entry-points"][plug.ENTRY_POINT_GROUP]
    assert eps == {"videoktr": "videoktr.integrations.lmms_eval:manifest"}
    module, attr = eps["videoktr"].split(":")
    assert module == plug.__name__ and callable(getattr(plug, attr))
    assert "lmms-eval" in project["project"]["optional-dependencies"]


def test_module_works_without_lmms_eval_and_the_class_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # import lmms_eval now raises ImportError
    monkeypatch.setitem(sys.modules, "lmms_eval.api", None)
    monkeypatch.setitem(sys.modules, "lmms_eval.api.model", None)
    monkeypatch.setattr(plug, "_MODEL_CLASS", None)
    with pytest.raises(ImportError, match=r"pip install lmms-eval==0\.7\.3"):
        plug.VideoKTR  # noqa: B018 - the module attribute builds the class
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        plug.Nope  # noqa: B018


# -------------------------------------------------------------------------------------------- settings


def test_model_args_are_typed_and_checked():
    s = settings(frames="8", fps="1", batch_size="3", temperature=0, prompt="task", max_batch_size=None)
    assert (s.frames, s.fps, s.batch_size, s.temperature, s.prompt) == (8, 1.0, 3, 0.0, "task")
    with pytest.raises(plug.PluginError, match="batch_size must be an integer, got 'auto'"):
        settings(batch_size="auto")
    with pytest.raises(plug.PluginError, match=r"unknown model argument\(s\) num_frames"):
        settings(num_frames=8)
    with pytest.raises(plug.PluginError, match="frames must be an even number"):
        settings(frames=7)
    with pytest.raises(plug.PluginError, match="prompt must be one of reasoning, task, got 'cot'"):
        settings(prompt="cot")
    with pytest.raises(plug.PluginError, match="pretrained=DIR"):
        plug.PluginSettings.from_model_args(device="cpu")
    assert settings().rope_positions is None  # the model directory's record decides
    assert settings(rope_positions="transformers").rope_positions == "transformers"
    with pytest.raises(plug.PluginError, match="rope_positions must be one of qwen, transformers, got 'vllm'"):
        settings(rope_positions="vllm")


# --------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("context", [
    MC_CONTEXT,
    ("\nQuestion:Which shape appears first?\nA: a red circle\nB: a blue square\nC: a green star\nD: a white cross\n"
     "Do not give any intermediate reasoning. Answer directly with the letter of one option from the\n"
     "listed choices.\n"),
    ("Which shape appears first?\nOptions:\n(A) a red circle\n(B) a blue square\n(C) a green star\n"
     "(D) a white cross\nThe best answer is:"),
    ("<image>Which shape appears first?\nA) a red circle\nB) a blue square\nC) a green star\nD) a white cross\n"
     "Reply with the letter only."),
], ids=["instruction-question-options-instruction", "question-label-colon-options", "parenthesised", "image-tag"])
def test_reasoning_prompt_is_the_evaluators_prompt(context):
    got = plug.build_prompt(context, settings(), "videomme", 3)
    assert got.prompt == evaluator_prompt(mc_item(), "reasoning")
    assert got.item.answer_type == "mc" and got.item.options == mc_item().options
    assert got.item.task == "videomme" and got.item.id == "3"


def test_prompt_kinds_and_task_mode():
    yes_no = plug.build_prompt("Is the circle red? Please answer yes or no.", settings())
    assert yes_no.item.answer_type == "yes_no"
    assert yes_no.prompt == evaluator_prompt(Item("1", "x", "Is the circle red? Please answer yes or no.", "yes",
                                                  "yes_no"), "reasoning")
    assert plug.build_prompt("How many shapes?", settings()).item.answer_type == "open"
    assert plug.build_prompt("How many shapes?", settings(answer_type="numeric")).item.answer_type == "numeric"
    task_mode = plug.build_prompt(MC_CONTEXT, settings(prompt="task"))
    assert task_mode.prompt == MC_CONTEXT and task_mode.item.options == mc_item().options
    with pytest.raises(plug.PluginError, match="task 'mmvu' doc 7: answer_type=mc but the context has no option"):
        plug.build_prompt("How many shapes?", settings(answer_type="mc"), "mmvu", 7)
    # a question that merely mentions answering is left alone
    assert "Answer the phone?" in plug.build_prompt("Who will answer the phone?\nAnswer the phone?",
                                                    settings()).prompt


# ------------------------------------------------------------------------------------ frames and fps


def test_frames_sampled_by_our_sampler_with_fps_metadata(tiny, clip_4fps):
    _, processor = tiny
    media = plug.load_visuals([str(clip_4fps)], settings(frames=16), "t")
    (clip,) = media.clips
    assert clip.num_frames == 8 and clip.fps == pytest.approx(2.0) and clip.source_fps == pytest.approx(4.0)
    seen = {}

    class Spy:
        def __getattr__(self, name):
            return getattr(processor, name)

        def __call__(self, **kwargs):
            seen.update(kwargs)
            return processor(**kwargs)

    inputs = plug.encode(Spy(), ["Q?"], [media])
    assert [m.fps for m in seen["video_metadata"]] == [pytest.approx(2.0)] and seen["do_sample_frames"] is False
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([1.0])  # 2 frames a group at 2 fps
    # what a processor given the same frames without metadata uses: 24 fps, groups almost on one position
    bare = processor(text=["<|vision_start|><|video_pad|><|vision_end|>Q?"], videos=[clip.frames],
                     do_sample_frames=False, return_tensors="pt")
    assert bare["second_per_grid_ts"].tolist() == pytest.approx([2 / 24])
    one_fps = plug.load_visuals([str(clip_4fps)], settings(frames=16, fps=1.0), "t")
    assert plug.encode(processor, ["Q?"], [one_fps])["second_per_grid_ts"].tolist() == pytest.approx([2.0])


def test_encoding_equals_videoktr_eval(tiny, tiny_dir, clip_4fps):
    """Same prompt and clip: the model inputs equal those of `videoktr eval`'s generator."""
    from videoktr.eval.generate import HFGenerator
    from videoktr.eval.runner import Request

    model, processor = tiny
    gen = HFGenerator.__new__(HFGenerator)  # its model and processor are the fixture's (no second load)
    gen.model, gen.processor = model, processor
    gen.fps, gen.frames, gen.min_frames, gen.video_backend = 2.0, 16, 4, "pyav"
    item = mc_item(video=str(clip_4fps))
    ours = plug.build_prompt(MC_CONTEXT, settings())
    media = plug.load_visuals([str(clip_4fps)], settings(frames=16), "t")
    got = plug.encode(processor, [ours.prompt], [media])
    want = gen._encode([Request(item, evaluator_prompt(item, "reasoning"), clip_4fps)])
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=key)


# --------------------------------------------------------------------------------- generation settings


def test_generation_options_follow_the_task():
    task = settings(prompt="task")
    o = plug.generation_options({"max_new_tokens": 16, "temperature": 0, "until": ["\n\n", "Q:"]}, task)
    assert (o.max_new_tokens, o.do_sample, o.until) == (16, False, ("\n\n", "Q:"))
    o = plug.generation_options({"max_new_tokens": 64, "temperature": 0.7, "top_p": 0.9, "until": "END"}, task)
    assert (o.do_sample, o.temperature, o.top_p, o.until) == (True, 0.7, 0.9, ("END",))
    o = plug.generation_options({"temperature": 0.7, "do_sample": False, "num_beams": 2}, task)
    assert (o.do_sample, o.temperature, o.num_beams) == (False, 0.0, 2)
    assert plug.generation_options({}, task).max_new_tokens == plug.TASK_DEFAULT_MAX_NEW_TOKENS
    # reasoning: a direct-answer budget is raised and blank-line stops dropped; the model arguments override
    o = plug.generation_options({"max_new_tokens": 16, "until": ["\n\n", "END"]}, settings())
    assert (o.max_new_tokens, o.until) == (plug.REASONING_MIN_NEW_TOKENS, ("END",))
    assert plug.generation_options({"max_new_tokens": 4096}, settings()).max_new_tokens == 4096
    assert plug.generation_options({"max_new_tokens": 16, "until": None}, settings(prompt="task")).until == ()
    o = plug.generation_options({"max_new_tokens": 16, "temperature": 0}, settings(max_new_tokens=40,
                                                                                   temperature=0.1, top_p=0.001))
    assert (o.max_new_tokens, o.do_sample, o.temperature, o.top_p) == (40, True, 0.1, 0.001)
    with pytest.raises(plug.PluginError, match="task 'mmvu' doc 2: generation_kwargs until must be"):
        plug.generation_options({"until": 5}, task, plug.describe_request("mmvu", 2))


class ScriptedModel:
    """The tiny model whose `generate` appends a scripted reply per row (chosen from the row's prompt text) and
    records the keyword arguments it was given."""

    def __init__(self, model, tokenizer, reply):
        self.model, self.tokenizer, self.reply = model, tokenizer, reply
        self.calls: list[dict] = []

    @property
    def device(self):
        return self.model.device

    def generate(self, input_ids, **kwargs):
        self.calls.append({k: v for k, v in kwargs.items() if not torch.is_tensor(v)} | {"rows": len(input_ids)})
        prompts = [self.tokenizer.decode(row) for row in input_ids]
        replies = [self.tokenizer(self.reply(p), add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(r) for r in replies)
        pad = self.tokenizer.pad_token_id
        tail = torch.tensor([r + [pad] * (width - len(r)) for r in replies], dtype=input_ids.dtype)
        return torch.cat([input_ids, tail], dim=1)


def test_generate_extracts_answers_in_request_order_over_mixed_batches(tiny, tiny_dir, clip_4fps, tmp_path):
    from PIL import Image

    model, processor = tiny

    def reply(prompt: str) -> str:
        if "<|video_pad|>" in prompt:
            return "<think>the circle came first</think> <answer>(A)</answer>"
        if "<|image_pad|>" in prompt:
            return "<think>it is red\n\nso</think><answer>yes</answer>"
        return "The answer is B. END and more"

    scripted = ScriptedModel(model, processor.tokenizer, reply)
    log = tmp_path / "raw.jsonl"
    b = plug.Backend(settings(tiny_dir, batch_size=2, raw_output_file=str(log)), model=scripted,
                     processor=processor)
    image = Image.fromarray(np.full((56, 56, 3), 200, dtype=np.uint8))
    reqs = [
        plug.GenerateRequest(MC_CONTEXT, {"max_new_tokens": 16, "until": ["\n\n"]}, [str(clip_4fps)], "t", 0),
        plug.GenerateRequest(MC_CONTEXT.replace("based on the video", ""), {"until": ["END"]}, [], "t", 1),
        plug.GenerateRequest("Is the square red? Answer yes or no.", {"max_new_tokens": 16}, [image], "t", 2),
        plug.GenerateRequest(MC_CONTEXT, {"max_new_tokens": 16}, [str(clip_4fps)], "t", 3),
    ]
    results = b.generate(reqs)
    assert [r.answer for r in results] == ["A", "B", "yes", "A"]
    assert [r.method for r in results] == ["answer_tag", "plain", "answer_tag", "answer_tag"]
    assert results[1].output == "The answer is B. "  # cut before the stop string
    # requests 0, 2, 3 share settings (reasoning drops the "\n\n" stop): batches of 2 and 1; request 1 alone
    assert sorted(c["rows"] for c in scripted.calls) == [1, 1, 2]
    stopping = [c for c in scripted.calls if c.get("stop_strings")]
    assert len(stopping) == 1 and stopping[0]["stop_strings"] == ["END"] and stopping[0]["rows"] == 1
    assert all(c["max_new_tokens"] == plug.REASONING_MIN_NEW_TOKENS and c["do_sample"] is False
               for c in scripted.calls)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["doc_id"] for r in rows] == [0, 1, 2, 3] and rows[0]["output"].startswith("<think>")


class Recording:
    """The tiny model, recording how many tokens each real `generate` call added."""

    def __init__(self, model):
        self.model, self.new_tokens = model, []

    @property
    def device(self):
        return self.model.device

    def generate(self, input_ids, **kwargs):
        out = self.model.generate(input_ids=input_ids, **kwargs)
        self.new_tokens.append(out.shape[1] - input_ids.shape[1])
        return out


def test_tiny_model_generates_a_mixed_batch(tiny, tiny_dir, clip_4fps):
    model, processor = tiny
    recording = Recording(model)
    b = plug.Backend(settings(tiny_dir, batch_size=2, max_new_tokens=4), model=recording, processor=processor)
    reqs = [plug.GenerateRequest(MC_CONTEXT, {"temperature": 0}, [str(clip_4fps)], "t", 0),
            plug.GenerateRequest("How many shapes?", {"temperature": 0}, [], "t", 1)]
    first = b.generate(reqs)
    assert len(first) == 2 and all(isinstance(r.output, str) and r.output for r in first)
    assert recording.new_tokens == [4]  # one batch of two, max_new_tokens=4
    assert [r.output for r in b.generate(reqs)] == [r.output for r in first]  # greedy


# --------------------------------------------------------------------------------------------- answers


def test_final_answer():
    item = mc_item()
    assert plug.final_answer("<think>hmm, B or C</think><answer>C. a green star</answer>", item) == ("C",
                                                                                                   "answer_tag")
    assert plug.final_answer("Therefore, the final answer is: D", item) == ("D", "plain")
    # unreadable: never the reasoning (a task's parser could pick a letter out of it)
    assert plug.final_answer("<think>A looks likely but B", item) == ("", "unparsed")
    assert plug.final_answer("<think>A or B</think>no idea", item) == ("no idea", "unparsed")
    assert plug.final_answer("<answer>maybe</answer>", item) == ("maybe", "answer_tag_unparsed")
    raw = "<think>x</think><answer>B</answer>"
    assert plug.final_answer(raw, item, "raw") == (raw, "raw")


# ---------------------------------------------------------------------------------------------- media


def test_missing_or_unreadable_media_names_the_file(backend, tmp_path):
    missing = tmp_path / "videos" / "gone.mp4"
    req = plug.GenerateRequest(MC_CONTEXT, {}, [str(missing)], "videomme", 12)
    with pytest.raises(plug.PluginMediaError, match=r"task 'videomme' doc 12: video file not found: .*gone\.mp4"):
        backend.generate([req])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    with pytest.raises(plug.PluginMediaError, match=r"cannot decode video .*broken\.mp4"):
        plug.load_visuals([str(broken)], backend.settings, "t")
    with pytest.raises(plug.PluginMediaError, match=r"doc_to_visual gave a dict with keys \['array'"):
        plug.load_visuals([{"array": [0.0], "sampling_rate": 16000}], backend.settings, "t")


# ---------------------------------------------------------------------------------------- lmms-eval args


def test_instance_arguments_resolve_against_the_task_data(clip_4fps):
    docs = {"mytask": {"test": [{"video": str(clip_4fps), "answer": "B"}, {"video": None, "answer": "C"}]}}
    gen = plug.resolve_generate_args(("ctx", {"until": ["\n\n"]}, lambda d: [d["video"]], 0, "mytask", "test"),
                                     docs)
    assert (gen.context, gen.visuals, gen.task, gen.doc_id) == ("ctx", [str(clip_4fps)], "mytask", 0)
    text_only = plug.resolve_generate_args(("ctx", {}, lambda d: None, 1, "mytask", "test"), docs)
    assert text_only.visuals == []
    ll = plug.resolve_loglikelihood_args(("ctx", lambda d: d["answer"], lambda d: [], 1, "mytask", "test"), docs)
    assert ll.continuation == "C"
    assert plug.resolve_loglikelihood_args(("", " B"), docs).visuals == []
    with pytest.raises(plug.PluginError, match=r"task 'mytask' doc 5: no document 5 in split 'test'"):
        plug.resolve_generate_args(("ctx", {}, lambda d: [], 5, "mytask", "test"), docs)
    with pytest.raises(plug.PluginError, match="expects \\(context, generation_kwargs"):
        plug.resolve_generate_args(("ctx", {}), docs)


# ------------------------------------------------------------------------------------------- loglikelihood


def test_continuation_logprob_is_the_sum_of_token_logprobs(tiny, clip_4fps):
    model, processor = tiny
    media = plug.load_visuals([str(clip_4fps)], settings(frames=16), "t")
    inputs = plug.encode(processor, ["Which shape?"], [media])
    tok = processor.tokenizer
    cont = tok(" a blue square", add_special_tokens=False)["input_ids"]
    logp, _ = plug.continuation_logprob(model, tok, inputs, " a blue square")
    # reference: extend the prompt one token at a time and read each token's log-probability
    total, ids = 0.0, inputs
    for t in cont:
        with torch.no_grad():
            last = torch.log_softmax(model(**ids).logits[0, -1].float(), -1)
        total += last[t].item()
        ids = dict(ids) | {"input_ids": torch.cat([ids["input_ids"], torch.tensor([[t]])], 1),
                           "attention_mask": torch.cat([ids["attention_mask"], torch.ones(1, 1, dtype=torch.long)], 1),
                           "mm_token_type_ids": torch.cat([ids["mm_token_type_ids"],
                                                           torch.zeros(1, 1, dtype=ids["mm_token_type_ids"].dtype)],
                                                          1)}
    assert logp == pytest.approx(total, abs=1e-4) and logp < 0
    # the greedy flag: the argmax token after the prompt is greedy, another token is not
    with torch.no_grad():
        best = int(model(**inputs).logits[0, -1].argmax())
    best_text = tok.decode([best])
    if tok(best_text, add_special_tokens=False)["input_ids"] == [best]:
        assert plug.continuation_logprob(model, tok, inputs, best_text)[1] is True
    other = next(t for t in range(100, 200) if t != best)
    assert plug.continuation_logprob(model, tok, inputs, tok.decode([other]))[1] is False


def test_lmms_eval_gets_the_negative_log_likelihood():
    """lmms-eval 0.7.3 picks the option with the smallest value: the likeliest must have the smallest."""
    scores = [(-2.5, False), (-0.1, True), (-7.0, False)]
    handed = plug.as_lmms_eval_scores(scores)
    assert handed == [(2.5, False), (0.1, True), (7.0, False)]
    assert min(range(3), key=lambda i: handed[i][0]) == max(range(3), key=lambda i: scores[i][0])


def test_backend_loglikelihood_uses_the_visuals(backend, clip_4fps):
    with_video = [plug.LoglikelihoodRequest(MC_CONTEXT, f" {c}", [str(clip_4fps)], "t", 0) for c in "ABCD"]
    without = [plug.LoglikelihoodRequest(MC_CONTEXT, f" {c}", [], "t", 1) for c in "ABCD"]
    scores = backend.loglikelihood(with_video + without + [plug.LoglikelihoodRequest("", " A", [])])
    assert len(scores) == 9 and all(isinstance(s, float) and isinstance(g, bool) for s, g in scores)
    assert [s for s, _ in scores[:4]] != [s for s, _ in scores[4:8]]  # the video changes the scores


@pytest.mark.parametrize("scheme", ["qwen", "transformers"])
def test_backend_loads_the_model_with_the_position_scheme(tiny_dir, scheme):
    from videoktr.models.positions import scheme_of

    backend = plug.Backend(settings(str(tiny_dir), rope_positions=scheme))
    assert scheme_of(backend.model) == scheme


def test_backend_uses_the_scheme_the_model_was_trained_with_unless_told(tiny_dir, tmp_path, capsys):
    """Without rope_positions= the plugin computes the scheme the directory records (or an earlier videoktr
    trained it under, or qwen for another tool's), saying which when there is no record; the argument
    overrides it with one warning."""
    from builders import SCHEME_DIRS, scheme_dirs

    from videoktr.models.positions import scheme_of

    dirs = scheme_dirs(tiny_dir, tmp_path)
    capsys.readouterr()
    for name, trained in SCHEME_DIRS.items():
        assert scheme_of(plug.Backend(settings(str(dirs[name]))).model) == trained, name
        err = capsys.readouterr().err
        assert ("records no 3D position scheme" in err) == (not name.startswith("records_")), (name, err)
    other = plug.Backend(settings(str(dirs["old_videoktr_card"]), rope_positions="qwen"))
    assert scheme_of(other.model) == "qwen"
    assert "was trained under 3D position scheme 'transformers'; using 'qwen' as asked" in capsys.readouterr().err
