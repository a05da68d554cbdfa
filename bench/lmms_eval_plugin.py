"""Run the videoktr lmms-eval model through lmms-eval's own classes, on a tiny model and local synthetic clips.

Run with the python of an environment that has lmms-eval and videoktr (README, "lmms-eval"):

    /tmp/lmms-venv/bin/python bench/lmms_eval_plugin.py [--model DIR] [--work DIR] [--output FILE]

No network: the model is a tiny offline Qwen2.5-VL (built here unless --model is given), the clips are written
here with PyAV, and the tasks are local YAML files whose prompts and VideoMME scoring are lmms-eval's own
(`lmms_eval.tasks.videomme.utils`, imported by the task's utils module at run time). Checked:

1. lmms-eval's registry resolves `--model videoktr` through our entry point to our lmms subclass.
2. lmms-eval `Instance`s through `generate_until`: the processor gets `video_metadata` at the sampled 2 fps
   (`second_per_grid_ts` 1.0 instead of the processor's default 2/24); a batch mixes video and text-only
   requests; `loglikelihood` scores the choices; `generate_until_multi_round` refuses by name.
3. The plugin's reasoning prompt for lmms-eval's own VideoMME (and, where it imports, MMVU) context equals the
   prompt `videoktr eval` builds for the same question.
4. The `lmms-eval` command, twice per mode: a generate_until task (VideoMME prompt and scoring) and a
   multiple_choice task (loglikelihood) with the real tiny model; then the generate_until task with scripted
   replies (the tiny model's `generate` swapped for fixed texts: two answers in `<answer>` tags and one reasoning
   cut off before its answer), scored by lmms-eval with `answer=extract` (ours) and `answer=raw`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TASK = "videoktr_clips"
MC_TASK = "videoktr_clips_mc"
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "white": (240, 240, 240)}
OPTIONS = ["A. red", "B. blue", "C. green", "D. white"]
# (first colour, second colour): the question asks which colour fills the screen first
CLIPS = [("red", "blue"), ("green", "red"), ("blue", "white")]
# scripted replies per clip for check 4 (keyed by the first colour, which the question's answer is)
SCRIPTED = {
    "red": "<think>The screen starts red and turns blue, so not B.</think>\n<answer>A</answer>",
    "green": "<think>Green first, then red; C is green.</think>\n<answer>C</answer>",
    "blue": "<think>Blue first? Or was it C, or D",  # cut off before any answer
}

TASK_UTILS = '''"""Local lmms-eval task over synthetic clips, using lmms-eval's own VideoMME prompt and scoring."""
from lmms_eval.tasks.videomme.utils import (videomme_aggregate_results, videomme_doc_to_text,
                                            videomme_process_results)


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return videomme_doc_to_text(doc, lmms_eval_specific_kwargs)


def process_results(doc, results):
    return videomme_process_results(doc, results)


def aggregate_results(results):
    return videomme_aggregate_results(results)


def mc_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + "\\n" + "\\n".join(doc["options"]) + "\\nAnswer:"


def mc_doc_to_target(doc):
    return "ABCD".index(doc["answer"])
'''

TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function videoktr_clips_utils.doc_to_visual
doc_to_text: !function videoktr_clips_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 16
  temperature: 0
  top_p: 1.0
  num_beams: 1
  do_sample: false
process_results: !function videoktr_clips_utils.process_results
metric_list:
  - metric: videomme_perception_score
    aggregation: !function videoktr_clips_utils.aggregate_results
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\nGive the letter of the correct option directly."
"""

MC_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: multiple_choice
doc_to_visual: !function videoktr_clips_utils.doc_to_visual
doc_to_text: !function videoktr_clips_utils.mc_doc_to_text
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: !function videoktr_clips_utils.mc_doc_to_target
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


# -------------------------------------------------------------------------------------------- set-up


def write_clips(root: Path) -> list[dict]:
    """Three 4-second clips at 4 fps (16 frames, 56x56): one colour for 2 s, then another. VideoMME-shaped docs."""
    from videoktr.data.video import write_video

    docs = []
    for i, (first, second) in enumerate(CLIPS):
        frames = np.zeros((16, 56, 56, 3), dtype=np.uint8)
        frames[:8] = COLOURS[first]
        frames[8:] = COLOURS[second]
        path = write_video(root / "videos" / f"clip{i}.mp4", frames, fps=4.0)
        docs.append({"question_id": f"clip-{i}", "videoID": f"clip{i}", "duration": "short", "domain": "Knowledge",
                     "sub_category": "Humanity & History", "task_type": "Temporal Perception",
                     "question": "Which colour fills the screen first?", "options": OPTIONS,
                     "answer": "ABCD"[list(COLOURS).index(first)], "video": str(path.resolve())})
    return docs


def write_tasks(root: Path, docs: list[dict]) -> Path:
    """A task folder for `--include_path`: the docs, a generate_until and a multiple_choice task."""
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "videoktr_clips_utils.py").write_text(TASK_UTILS)
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, docs=data))
    (tasks / f"{MC_TASK}.yaml").write_text(MC_YAML.format(task=MC_TASK, docs=data))
    return tasks


class ScriptedModel:
    """The real model with `generate` replaced by SCRIPTED replies, chosen by the clip's first colour (read from
    the mean colour of the first frames of the video the row was given)."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor

    @property
    def device(self):
        return self.model.device

    def generate(self, input_ids, **kwargs):
        import torch

        tok = self.processor.tokenizer
        texts = [tok.decode(row) for row in input_ids]
        firsts = iter(self._first_colours(kwargs))
        replies = [SCRIPTED[next(firsts)] if "<|video_pad|>" in t else "<answer>A</answer>" for t in texts]
        ids = [tok(r, add_special_tokens=False)["input_ids"] for r in replies]
        width = max(len(r) for r in ids)
        tail = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in ids], dtype=input_ids.dtype)
        return torch.cat([input_ids, tail], dim=1)

    def _first_colours(self, kwargs) -> list[str]:
        """Per video of the batch, the colour nearest to its first temporal patch (un-normalised pixels)."""
        pixels, grids = kwargs.get("pixel_values_videos"), kwargs.get("video_grid_thw")
        if pixels is None:
            return []
        vp = self.processor.video_processor
        mean = np.array(vp.image_mean).reshape(3, 1)
        std = np.array(vp.image_std).reshape(3, 1)
        out, start = [], 0
        for t, h, w in grids.tolist():
            n = t * h * w
            first = pixels[start:start + h * w].float().numpy().reshape(h * w, 3, -1)  # patches, channel, rest
            rgb = ((first.mean(axis=(0, 2)).reshape(3, 1) * std + mean).ravel() * 255)
            out.append(min(COLOURS, key=lambda c: float(np.abs(np.array(COLOURS[c]) - rgb).sum())))
            start += n
        return out


# -------------------------------------------------------------------------------------------- checks


def check_registry() -> dict:
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    cls = get_model("videoktr")
    manifest = MODEL_REGISTRY_V2.get_manifest("videoktr")
    assert cls.__module__ == "videoktr.integrations.lmms_eval" and cls.__name__ == "VideoKTR", cls
    return {"class": f"{cls.__module__}.{cls.__name__}", "simple_class_path": manifest.simple_class_path}


def _task_utils(tasks: Path):
    """The local task's utils module, imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("videoktr_clips_utils", tasks / "videoktr_clips_utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_instances(model_dir: str, docs: list[dict], tasks: Path) -> dict:
    """lmms-eval Instances straight into the model's methods (check 2)."""
    from lmms_eval.api.instance import Instance, unwrap_generation_output
    from lmms_eval.models import get_model

    lm = get_model("videoktr").create_from_arg_string(
        f"pretrained={model_dir},device=cpu,max_new_tokens=4", {"batch_size": "4", "max_batch_size": None,
                                                                 "device": None})
    lm.task_dict = {TASK: {"test": docs}}
    seen = []
    processor = lm.backend.processor

    class Spy:
        def __getattr__(self, name):
            return getattr(processor, name)

        def __call__(self, **kwargs):
            out = processor(**kwargs)
            seen.append({"fps": [m.fps for m in kwargs.get("video_metadata", [])],
                         "second_per_grid_ts": out.get("second_per_grid_ts", None)})
            return out

    lm.backend.processor = Spy()

    def meta(i):
        return {"task": TASK, "doc_id": i, "repeats": 1}

    def visual(doc):
        return [doc["video"]]

    gen = {"max_new_tokens": 16, "temperature": 0, "until": ["\n\n"]}
    insts = [Instance("generate_until", (f"Q{i}?\nA. red\nB. blue\nC. green\nD. white", gen, visual, i, TASK,
                                         "test"), idx=0, metadata=meta(i)) for i in range(len(docs))]
    insts.append(Instance("generate_until", ("How many colours?", gen, lambda d: None, 0, TASK, "test"), idx=0,
                          metadata=meta(0)))
    answers = lm.generate_until(insts)
    assert len(answers) == len(insts) and all(isinstance(a, str) for a in answers)
    assert len(seen) == 1 and seen[0]["fps"] == [2.0] * len(docs), seen  # one batch: 3 videos and a text
    spg = [round(float(x), 4) for x in seen[0]["second_per_grid_ts"]]
    assert spg == [1.0] * len(docs), spg
    # the multiple_choice task's requests, by hand: per doc its context and " A" ... " D"
    mc_text = _task_utils(tasks).mc_doc_to_text
    lls = [Instance("loglikelihood", (mc_text(d), f" {c}", visual, i, TASK, "test"), idx=j, metadata=meta(i))
           for i, d in enumerate(docs) for j, c in enumerate("ABCD")]
    pairs = [unwrap_generation_output(x)[0] for x in lm.loglikelihood(lls)]
    assert len(pairs) == 4 * len(docs) and all(isinstance(s, float) and isinstance(g, bool) for s, g in pairs)
    logprobs = [-s for s, _ in pairs]  # lmms-eval gets the negative log-likelihood (it ranks by argmin)
    likeliest = ["ABCD"[int(np.argmax(logprobs[4 * i:4 * i + 4]))] for i in range(len(docs))]
    expected_mc_acc = float(np.mean([c == d["answer"] for c, d in zip(likeliest, docs)]))
    try:
        lm.generate_until_multi_round(insts[:1])
        refused = None
    except NotImplementedError as exc:
        refused = str(exc)
    assert refused and "generate_until_multi_round" in refused
    return {"processor_video_fps": seen[0]["fps"], "second_per_grid_ts": spg,
            "processor_default_second_per_grid_ts": round(2 / 24, 4), "generate_until_answers": answers,
            "loglikelihood_logprobs": [round(x, 4) for x in logprobs], "likeliest_choice": likeliest,
            "expected_mc_acc": expected_mc_acc, "multi_round": refused}


def _videomme_prompt_kwargs() -> dict:
    """lmms-eval's VideoMME `lmms_eval_specific_kwargs` (default and qwen3_vl), read from its installed YAML."""
    import yaml

    import lmms_eval.tasks.videomme.utils as videomme_utils

    lines = (Path(videomme_utils.__file__).parent / "videomme.yaml").read_text().splitlines()
    config = yaml.safe_load("\n".join(line for line in lines if "!function" not in line))
    kwargs = config["lmms_eval_specific_kwargs"]
    return {"default": kwargs["default"], "qwen3_vl": kwargs["qwen3_vl"]}


def check_prompts(docs: list[dict]) -> dict:
    """The plugin's reasoning prompt for lmms-eval's own task contexts (check 3): for VideoMME (its default and
    qwen3_vl prompt kwargs) it equals `videoktr eval`'s prompt for the same question; for MMVU (where its utils
    import) the options are read and no line of the task's answer-format instruction is left."""
    from videoktr.eval.benchmarks.base import Item
    from videoktr.text.prompts import ANSWER_SUFFIX, REASONING_INSTRUCTION
    from videoktr.text.prompts import build_prompt as evaluator_prompt
    from videoktr.integrations.lmms_eval import PluginSettings, build_prompt

    from lmms_eval.tasks.videomme.utils import videomme_doc_to_text

    settings = PluginSettings(pretrained="-")
    doc = docs[0]
    item = Item("0", "videomme", doc["question"], doc["answer"], "mc",
                options={o[0]: o[3:] for o in doc["options"]})
    out = {}
    for name, kwargs in _videomme_prompt_kwargs().items():
        context = videomme_doc_to_text(doc, kwargs)
        out[f"videomme ({name} kwargs)"] = build_prompt(context, settings).prompt == evaluator_prompt(item)
    try:
        from lmms_eval.tasks.mmvu.utils import mmvu_doc_to_text
    except Exception as exc:  # MMVU's utils import its judge client; not needed for the prompt
        out["mmvu"] = f"not checked: {type(exc).__name__}: {exc}"
    else:
        choices = {"A": "red", "B": "blue", "C": "green", "D": "white", "E": "black"}
        context = mmvu_doc_to_text({"question_type": "multiple-choice", "question": doc["question"],
                                    "choices": choices})
        got = build_prompt(context, settings)
        task_lines = [line.strip() for line in context.splitlines() if line.strip()]
        after_options = task_lines[task_lines.index("E: black") + 1:]
        out["mmvu"] = {"options_read": got.item.options == choices,
                       "ends_with_reasoning_instruction": got.prompt.endswith(REASONING_INSTRUCTION
                                                                              + ANSWER_SUFFIX["mc"]),
                       "question_first": got.prompt.startswith(doc["question"] + "\n"),
                       "task_lines_after_options": len(after_options),
                       "of_them_kept": sum(line in got.prompt for line in after_options),
                       "instruction_lines_kept": sum(line in got.prompt for line in after_options
                                                     if re.search(r"directly|reasoning|choices", line))}
    videomme_ok = [v for k, v in out.items() if k.startswith("videomme")]
    assert videomme_ok and all(v is True for v in videomme_ok), out
    return out


# ------------------------------------------------------------------------------------------------ CLI


def run_cli(model_dir: str, tasks: Path, out: Path, task_names: str, model_args: str, scripted: bool,
            env: dict) -> dict:
    """`lmms-eval --model videoktr ...` in a fresh process; its results and logged samples."""
    args = ["--model", "videoktr", "--model_args", f"pretrained={model_dir},device=cpu,{model_args}",
            "--tasks", task_names, "--include_path", str(tasks), "--batch_size", "2", "--output_path", str(out),
            "--log_samples"]
    if scripted:
        cmd = [sys.executable, __file__, "--scripted-cli", *args]
    else:
        cmd = [str(Path(sys.executable).with_name("lmms-eval")), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    found = sorted(glob.glob(str(out / "**" / "*_results.json"), recursive=True))
    if not found:  # lmms-eval 0.7.3 logs an evaluation error and still exits 0
        raise RuntimeError(f"{' '.join(cmd)} wrote no results:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    results = json.loads(Path(found[-1]).read_text())
    samples = {}
    for f in glob.glob(str(out / "**" / "*_samples_*.jsonl"), recursive=True):
        rows = [json.loads(line) for line in Path(f).read_text().splitlines() if line.strip()]
        for row in rows:
            samples.setdefault(Path(f).stem.split("_samples_", 1)[1], []).append(row)
    scores = {t: {k: v for k, v in r.items() if k not in ("alias",) and "stderr" not in k}
              for t, r in results["results"].items()}
    shown = {t: [{"doc_id": r["doc_id"], "target": r.get("target"), "returned": r.get("resps", r.get("filtered_resps")),
                  "after_lmms_eval_filters": r.get("filtered_resps"),
                  "task_parsed": (r.get("videomme_perception_score") or {}).get("pred_answer"),
                  "score": (r.get("videomme_perception_score") or {}).get("score", r.get("acc"))}
                 for r in sorted(rows, key=lambda r: r["doc_id"])]
             for t, rows in samples.items()}
    return {"command": "lmms-eval " + " ".join(args), "scores": scores, "samples": shown}


def scripted_cli(argv: list[str]) -> None:
    """lmms-eval's command in this process, with the tiny model's generate replaced by SCRIPTED replies."""
    from videoktr.integrations import lmms_eval as plug

    original = plug.Backend.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.model = ScriptedModel(self.model, self.processor)

    plug.Backend.__init__ = init
    from lmms_eval.cli.dispatch import main as lmms_main

    sys.argv = ["lmms-eval", *argv]
    lmms_main()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: a tiny offline Qwen2.5-VL built here)")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--output", help="also write the summary (JSON) here")
    args = parser.parse_args(argv)

    import lmms_eval  # noqa: F401 - fail early outside lmms-eval's environment
    from importlib.metadata import version

    work = Path(args.work or tempfile.mkdtemp(prefix="lmms-eval-plugin-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(work / "hf_home"), TOKENIZERS_PARALLELISM="false")
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")})
    model_dir = args.model
    if model_dir is None:
        from videoktr.models.factory import create_model_dir

        model_dir = str(create_model_dir(work / "tiny", size="tiny", seed=0))
    docs = write_clips(work)
    tasks = write_tasks(work, docs)
    summary = {"lmms_eval": version("lmms_eval"), "transformers": version("transformers"),
               "torch": version("torch"), "av": version("av"), "model": model_dir}
    summary["registry"] = check_registry()
    print("registry:", json.dumps(summary["registry"]), flush=True)
    summary["instances"] = check_instances(model_dir, docs, tasks)
    print("instances:", json.dumps(summary["instances"]), flush=True)
    summary["prompts_equal_videoktr_eval"] = check_prompts(docs)
    print("prompts equal videoktr eval's:", json.dumps(summary["prompts_equal_videoktr_eval"]), flush=True)
    real = run_cli(model_dir, tasks, work / "out_real", f"{TASK},{MC_TASK}", "max_new_tokens=8", False, env)
    summary["cli_tiny_model"] = real
    print("lmms-eval, tiny model:", json.dumps(real["scores"]), flush=True)
    for mode in ("extract", "raw"):
        run = run_cli(model_dir, tasks, work / f"out_scripted_{mode}", TASK, f"answer={mode}", True, env)
        summary[f"cli_scripted_{mode}"] = run
        print(f"lmms-eval, scripted replies, answer={mode}:", json.dumps(run["scores"]),
              json.dumps([(s["doc_id"], s["returned"], s["task_parsed"], s["target"])
                          for s in run["samples"].get(TASK, [])]), flush=True)
    assert set(real["scores"]) >= {TASK, MC_TASK}, real["scores"]
    mc_acc = real["scores"][MC_TASK]["acc,none"]
    assert mc_acc == summary["instances"]["expected_mc_acc"], (mc_acc, summary["instances"])
    extracted = [s["returned"] for s in summary["cli_scripted_extract"]["samples"][TASK]]
    assert extracted == ["A", "C", ""], extracted
    assert summary["cli_scripted_extract"]["scores"][TASK]["videomme_perception_score,none"] == 200 / 3
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2, default=str))
    print(f"all checks passed (lmms-eval {summary['lmms_eval']}); work folder {work}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--scripted-cli":
        scripted_cli(sys.argv[2:])
    else:
        sys.exit(main())
