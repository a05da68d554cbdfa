"""docs/: every Python example of docs/api.md runs (in a temporary directory, on the tiny model, offline); every
`videoktr` command in the walkthrough's bash blocks parses with the CLI's own parser and uses only flags that
exist; every configs/ path the docs name exists."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api.md"
WALKTHROUGH = DOCS / "walkthrough.md"

# the api.md sections whose examples train or generate (seconds each): marked slow
SLOW_SECTIONS = {"Train", "Evaluate"}
FAST_SECTIONS = {"Configuration", "Attribute: which response tokens are key tokens"}


def code_blocks(path: Path, lang: str) -> list[tuple[str, str]]:
    """(section heading, code) for each ```lang block of a markdown file, in order."""
    blocks, heading, inside, lines = [], "", None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        if inside is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.startswith("```"):
                inside, lines = line[3:].strip(), []
        elif line.startswith("```"):
            if inside == lang:
                blocks.append((heading, "\n".join(lines) + "\n"))
            inside = None
        else:
            lines.append(line)
    assert inside is None, f"{path}: unclosed code block"
    return blocks


API_BLOCKS = code_blocks(API, "python")


def _params():
    seen: dict[str, int] = {}
    for heading, code in API_BLOCKS:
        n = seen[heading] = seen.get(heading, 0) + 1
        marks = ([pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")] if heading in SLOW_SECTIONS
                 else [])
        yield pytest.param(heading, code, id=f"{heading.split(':')[0].lower()}-{n}", marks=marks)


def test_api_page_has_train_attribute_and_evaluate_examples():
    headings = [h for h, _ in API_BLOCKS]
    assert set(headings) == SLOW_SECTIONS | FAST_SECTIONS, "classify a new api.md section as slow or fast here"
    code = "".join(c for _, c in API_BLOCKS)
    for call in ("load_config(", "run(config)", "create_model_dir(", "load_model(", "load_processor(",
                 "attribute(", "select_key_tokens(", "write_video(", 'main(["eval"', "run_generation("):
        assert call in code, call


@pytest.mark.parametrize(("heading", "code"), list(_params()))
def test_api_example_runs(heading, code, tmp_path, monkeypatch):
    """Run one block as a user would paste it: its own namespace, the repository's configs/ reachable as from
    the repository root, everything it writes under a temporary directory."""
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    namespace = {"__name__": "__docs__"}
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{API.name}:{heading}", "exec"), namespace)  # noqa: S102 (the docs' own examples)
    printed = out.getvalue()
    assert printed.strip(), "every example prints its result"
    if heading == "Configuration":
        config = namespace["config"]
        assert config.rl.max_steps == 10 and config.model.model == "checkpoints/Qwen2.5-VL-7B-COT-SFT"
        assert "refused:" in printed and "ratio" in printed
    elif heading == "Train":
        report = namespace["report"]
        assert report["steps"] == 1 and report["method"] == "ktr"
        assert (tmp_path / "runs/api-train/report.json").is_file() and (tmp_path / "runs/api-train/final").is_dir()
    elif heading.startswith("Attribute"):
        weights, result, ids = namespace["weights"], namespace["result"], namespace["completion_ids"]
        assert weights.shape == ids.shape and set(result.scores) == {"visual", "temporal", "entropy"}
        assert bool(result.valid["visual"].all()) and bool(result.valid["temporal"].all())
        assert 1 <= int(weights.sum()) <= ids.shape[1]
        assert printed.count("\n") >= ids.shape[1] + 2  # one line per response token, a header and the stats
    elif heading == "Evaluate":
        if "code" in namespace:
            assert namespace["code"] == 0 and namespace["summary"]["total"] == 2
            assert (tmp_path / "runs/api-eval/tempcompass/scored.jsonl").is_file()
        else:
            assert len(namespace["records"]) == len(namespace["items"]) == 1
            assert (tmp_path / "runs/api-eval-lib/predictions.jsonl").is_file()


# ------------------------------------------------------------------------------------ walkthrough commands


def _commands(code: str) -> list[list[str]]:
    """Simple commands of a bash block: continuation lines joined, split at ; && and newlines, `for ...; do` /
    `done` / `wait` and a trailing `&` dropped, leading VAR=value assignments removed, $VARS set to 0."""
    code = code.replace("\\\n", " ")
    out = []
    for line in code.splitlines():
        for part in re.split(r"\s*(?:;|&&)\s*", line.strip()):
            part = re.sub(r"^do(\s+|$)", "", part).rstrip("&").strip()
            if not part or part.startswith(("#", "for ", "done", "wait")):
                continue
            tokens = shlex.split(re.sub(r"\$\{?[A-Za-z_]+\}?", "0", part), comments=True)
            while tokens and re.match(r"^[A-Za-z_]+=", tokens[0]):
                tokens.pop(0)
            out.append(tokens)
    return out


WALK_COMMANDS = [cmd for _, code in code_blocks(WALKTHROUGH, "bash") for cmd in _commands(code) if cmd]
README_COMMANDS = [cmd for _, code in code_blocks(ROOT / "README.md", "bash") for cmd in _commands(code) if cmd]
GUIDE = DOCS / "guide.md"


def _videoktr_args(tokens: list[str]) -> list[str] | None:
    """The arguments given to `videoktr` (directly, or as `-m videoktr.cli` under accelerate/torchrun/python)."""
    if tokens[0] == "videoktr":
        return tokens[1:]
    if "-m" in tokens and tokens[tokens.index("-m") + 1] == "videoktr.cli":
        return tokens[tokens.index("-m") + 2:]
    return None


@pytest.fixture(scope="module")
def train_help() -> str:
    exe = Path(sys.executable).with_name("videoktr")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "videoktr.cli"]
    return subprocess.run([*cmd, "train", "--help"], capture_output=True, text=True, check=True,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout


def test_walkthrough_has_the_commands_it_promises():
    subcommands = [args[0] for cmd in WALK_COMMANDS if (args := _videoktr_args(cmd))]
    assert {"train", "filter", "eval"} <= set(subcommands)
    evaluated = {a for cmd in WALK_COMMANDS if (args := _videoktr_args(cmd)) and args[0] == "eval"
                 for a in args[args.index("--benchmark") + 1:args.index("--benchmark") + 2]}
    assert evaluated == {"video_holmes", "videommmu", "mmvu", "tempcompass", "videomme"}
    launches = [cmd for cmd in WALK_COMMANDS if cmd[0] == "accelerate"]
    assert any("--num_machines" in cmd for cmd in launches) and any("--num_machines" not in cmd for cmd in launches)


@pytest.mark.parametrize("tokens", WALK_COMMANDS + README_COMMANDS, ids=lambda t: " ".join(t)[:60])
def test_walkthrough_command_parses(tokens, train_help):
    from videoktr.cli import build_parser

    if tokens[0] == "accelerate":  # accelerate's own flags, checked with accelerate's parser
        from accelerate.commands.launch import launch_command_parser

        assert tokens[1] == "launch"
        launch = launch_command_parser().parse_args(tokens[2:])
        assert launch.module and launch.training_script == "videoktr.cli"
        assert (ROOT / launch.config_file).is_file(), launch.config_file
    args = _videoktr_args(tokens)
    if args is None:  # a shell helper (cp, make, activating the venv)
        assert tokens[0] in ("cp", "make", "."), tokens
        return
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[args[0]]
    known = {opt for action in sub._actions for opt in action.option_strings}
    flags = [a.split("=")[0] for a in args[1:] if a.startswith("--")]
    unknown = [f for f in flags if f not in known]  # exact names: argparse would accept abbreviations
    assert not unknown, f"{' '.join(tokens)}: no such flag(s) {unknown}"
    if args[0] == "train":
        listed = set(re.findall(r"--[a-z][a-z0-9-]*", train_help))
        assert set(flags) <= listed, f"not in `videoktr train --help`: {set(flags) - listed}"
    parsed = parser.parse_args(args)  # types, choices and required options (SystemExit on an error)
    if args[0] == "eval":
        from videoktr.eval.benchmarks import canonical_name

        for name in parsed.benchmark:
            canonical_name(name)
    for value in (getattr(parsed, "config", None),):
        if value:
            assert (ROOT / value).is_file(), value


def test_configs_paths_named_in_docs_exist():
    text = "\n".join(p.read_text(encoding="utf-8") for p in (WALKTHROUGH, API, GUIDE, ROOT / "README.md"))
    paths = set(re.findall(r"configs/[A-Za-z0-9_./{},-]*[A-Za-z0-9_]", text))
    assert "configs/video-ktr-7b.yaml" in paths and "configs/accelerate/zero3.yaml" in paths
    for path in paths:
        if path.endswith((".yaml", ".yml")):
            assert (ROOT / path).is_file(), f"docs name {path}, which does not exist"
        elif "*" not in path and "{" not in path:
            assert (ROOT / path).exists(), f"docs name {path}, which does not exist"
    # the recipes the walkthrough names by a wildcard exist too
    assert len(list((ROOT / "configs").glob("table2-*.yaml"))) == 6


def test_docs_are_linked_from_the_readme():
    """The README's first screen: the two commands with their durations, the quick path, then the way on."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    assert len(lines) <= 90, "the README is a first screen; reference goes to docs/guide.md"
    start = "\n".join(lines[:20])
    assert "make run" in start and "make test" in start and "minutes" in start
    for page in ("docs/walkthrough.md", "docs/api.md", "docs/guide.md", "docs/default-run.md"):
        assert page in readme and (ROOT / page).is_file(), page
    # every link between docs pages points at a file that exists
    for path in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if not target.startswith("http"):
                assert (path.parent / target).is_file(), f"{path.name} links {target}"


# ------------------------------------------------------------------------------------ the question format


def test_the_question_format_is_documented_with_an_example_both_loaders_read():
    """Issue 20 item 11: the Video-R1 question format was documented only in a docstring. docs/data.md names
    every field, links docs/examples/videor1-questions.json, and that file loads as training rows and as
    evaluation questions, each row with its prompt in the styles the page describes."""
    from videoktr.data.videor1 import REQUIRED_FIELDS, build_prompt, load_rows
    from videoktr.eval.benchmarks import get_benchmark
    from videoktr.text.prompts import build_prompt as eval_prompt

    page = (DOCS / "data.md").read_text(encoding="utf-8")
    example = DOCS / "examples" / "videor1-questions.json"
    assert "(examples/videor1-questions.json)" in page
    assert all(f"`{name}`" in page for name in (*REQUIRED_FIELDS, "options", "data_source", "process"))
    rows, skipped = load_rows(example)
    assert not skipped and {r["problem_type"] for r in rows} == {"multiple choice", "numerical", "free-form", "OCR"}
    items = get_benchmark("videor1").load(questions=example)
    assert [it.answer_type for it in items] == ["mc", "numeric", "open", "open"]
    assert items[0].options == {"A": "sits down", "B": "turns on the light", "C": "leaves again"}
    assert build_prompt(rows[0]) == eval_prompt(items[0], "reasoning")  # training's prompt is eval's
    assert eval_prompt(items[0], "plain") == (f"{items[0].question}\nOptions:\nA. sits down\nB. turns on the light\n"
                                              "C. leaves again")


def test_docs_speak_of_the_project_only():
    """Issue 20 item 12: docs/cost.md spoke of "other agents' test suites"; the docs say "other jobs" and never
    speak of who ran the measurements."""
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        found = re.findall(r"\b(agents?|sessions?|helpers?)\b", text, re.IGNORECASE)
        assert not found, f"{page.relative_to(ROOT)}: {found}"


def test_the_readme_names_the_default_worlds_folder():
    """The README's next commands point into the default world's cache folder by name."""
    from videoktr.train.config import load_config
    from videoktr.world.run import world_directory

    named = set(re.findall(r"\.cache/videoktr/world-[0-9a-f]+", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert named == {str(world_directory(load_config()))}
