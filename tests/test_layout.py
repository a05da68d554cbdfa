"""The package's layers, read from the source: no module imports a part above its own (every import counts: at the
top of a module, inside a function, under TYPE_CHECKING), each part says in its docstring what it may import, and
no function in the paper's math, attribution or training outgrows a screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "videoktr"

# Bottom to top. A module may import its own part and any part of a LOWER layer, never one of its own layer or above.
# (README "Layout" is this list as a map.)
LAYERS = (
    ("core", "text"),  # the paper's math (torch only); the question Item, prompts and answer reading (pure Python)
    ("models", "rewards"),  # offline factory, family adapters, perturbations; rewards by problem type
    ("attribution", "data"),  # responses -> per-token scores -> key-token mask; video decoding, Video-R1 rows
    ("eval",),  # benchmarks, generation, scoring
    ("filter", "train"),  # the difficulty filter; configuration, trainer, a run on data
    ("world",),  # the synthetic world: clips ... warm start, metrics, the default run
    ("analysis", "integrations"),  # explain / analyze; the lmms-eval plugin
    ("cli",),  # the `videoktr` command
)
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}
# The top-level package (`videoktr/__init__.py`, its version and the old-path table `_moved`) imports nothing of
# the parts and may be imported by any of them.
PACKAGE = "package"

# Functions whose code (docstring not counted) is longer than this, in the parts below, fail the check unless listed
# in LONG_FUNCTIONS with the reason they stay whole.
MAX_FUNCTION_LINES = 80
LENGTH_CHECKED = ("core", "attribution", "train")
LONG_FUNCTIONS: dict[str, str] = {
    # "videoktr.part.module:function": "why it stays one function",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """"videoktr.train.run" -> "train"; "videoktr" and "videoktr._moved" -> PACKAGE."""
    names = module.split(".")
    if len(names) == 1 or names[1] in ("_moved", "__version__"):
        return PACKAGE
    return names[1]


def _nodes(tree: ast.AST, type_checking: bool):
    """ast.walk, leaving out `if TYPE_CHECKING:` blocks unless `type_checking`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if (not type_checking and isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imported_modules(module: str, source: str, is_package: bool = False,
                     type_checking: bool = True) -> list[tuple[int, str]]:
    """(line, absolute module name) of every videoktr module that `source` (module `module`) imports. `from X import
    name` counts X.name when X is the top-level package (`from videoktr import world`), else X. type_checking=False:
    without the imports under `if TYPE_CHECKING:` (annotations only, never run)."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in _nodes(ast.parse(source), type_checking):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "videoktr":
                found += [(node.lineno, f"videoktr.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
    return [(line, name) for line, name in found if name == "videoktr" or name.startswith("videoktr.")]


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """The imports of `module` that break the layers, as "module:line imports target (part of layer n)"."""
    mine = part_of(module)
    out = []
    for line, target in imported_modules(module, source, is_package):
        theirs = part_of(target)
        if theirs == mine or theirs == PACKAGE:
            continue
        if mine == PACKAGE or theirs not in LAYER or mine not in LAYER or LAYER[theirs] >= LAYER[mine]:
            out.append(f"{module}:{line} imports {target} ({theirs}, layer {LAYER.get(theirs)}; "
                       f"{mine} is layer {LAYER.get(mine)})")
    return out


def modules():
    for path in sorted(SRC.rglob("*.py")):
        yield path, module_name(path)


def test_every_part_has_a_layer():
    parts = {part_of(name) for _, name in modules()} - {PACKAGE}
    assert parts == set(LAYER), f"parts without a layer: {parts - set(LAYER)}; layers without a part: " \
                                f"{set(LAYER) - parts}"


def test_no_module_imports_upward():
    bad = [line for path, name in modules()
           for line in upward_imports(name, path.read_text(), path.name == "__init__.py")]
    assert not bad, "imports across the layers (tests/test_layout.py LAYERS; README 'Layout'):\n" + "\n".join(bad)


def test_no_two_modules_import_each_other():
    """No circle of two (train/run.py and train/world_run.py were one): a module that needs another's names at run
    time is below it. Imports for annotations only (under TYPE_CHECKING) aside."""
    found = {name: path for path, name in modules()}
    graph = {}
    for name, path in found.items():
        targets = set()
        for _, target in imported_modules(name, path.read_text(), path.name == "__init__.py", type_checking=False):
            while target not in found and "." in target:  # `from .x import name` names a module or a name in it
                target = target.rsplit(".", 1)[0]
            if target in found and target != name:
                targets.add(target)
        graph[name] = targets
    circles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph[b]})
    assert not circles, f"modules that import each other: {circles}"


@pytest.mark.parametrize("module, source, is_package, expected", [
    ("videoktr.train.run", "from ..world.run import run_synthetic\n", False, "videoktr.world.run"),
    ("videoktr.train.run", "def f():\n    from videoktr import world\n", False, "videoktr.world"),
    ("videoktr.data.videor1", "from ..eval.extract import to_float\n", False, "videoktr.eval.extract"),
    ("videoktr.text", "from ..rewards import PROBLEM_TYPES\n", True, "videoktr.rewards"),
    ("videoktr.core.objective", "import videoktr.models.factory\n", False, "videoktr.models.factory"),
    ("videoktr.train.run", "from ..filter import FilterOptions\n", False, "videoktr.filter"),  # same layer
    ("videoktr.world.run", "from .. import analysis\n", False, "videoktr.analysis"),
])
def test_the_check_finds_an_upward_import(module, source, is_package, expected):
    """The checker itself: each of these would be a new upward import (or one across a layer) and is reported."""
    (found,) = upward_imports(module, source, is_package)
    assert f"imports {expected} " in found


@pytest.mark.parametrize("module, source, is_package", [
    ("videoktr.world.run", "from ..train.run import run\nfrom . import warmstart\nfrom .. import world as w\n",
     False),
    ("videoktr.train", "from ..attribution import attribute\nfrom .config import TrainConfig\n", True),
    ("videoktr.cli", "from . import __version__\nfrom .world.run import run\n", False),
    ("videoktr.eval.runner", "from ..text.prompts import build_prompt\nimport torch\n", False),
])
def test_the_check_accepts_downward_imports(module, source, is_package):
    assert upward_imports(module, source, is_package) == []


def test_each_part_says_what_it_may_import():
    """Every part that is a package opens its docstring with at most three lines, the last saying what it may
    import."""
    for part in LAYER:
        init = SRC / part / "__init__.py"
        if not init.is_file():
            continue  # a module (attribution.py, rewards.py, filter.py, cli.py)
        doc = ast.get_docstring(ast.parse(init.read_text()), clean=False) or ""
        head = doc.split("\n\n")[0].strip().splitlines()
        assert 1 <= len(head) <= 3 and head[-1].startswith("May import:"), f"{init}: {head}"


def function_lengths(path: Path):
    """(qualified name, lines of code without the docstring) of every function in `path`."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = child.body
                doc = body[0] if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str) else None
                lines = child.end_lineno - child.lineno + 1 - (doc.end_lineno - doc.lineno + 1 if doc else 0)
                out.append((f"{prefix}{child.name}", lines))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
    visit(tree, "")
    return out


def checked_functions():
    for path, name in modules():
        if part_of(name) in LENGTH_CHECKED:
            for function, lines in function_lengths(path):
                yield f"{name}:{function}", lines


def test_no_long_functions_in_the_math_attribution_and_training():
    long = {f"{name} ({lines} lines)" for name, lines in checked_functions()
            if lines > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS}
    assert not long, (f"functions over {MAX_FUNCTION_LINES} lines (split them by step, or list them with a reason "
                      f"in LONG_FUNCTIONS): {sorted(long)}")


def test_the_exceptions_are_still_needed():
    lengths = dict(checked_functions())
    stale = [name for name in LONG_FUNCTIONS if lengths.get(name, 0) <= MAX_FUNCTION_LINES]
    assert not stale, f"no longer long (or gone): remove from LONG_FUNCTIONS: {stale}"


def test_the_length_check_counts_code_not_docstrings(tmp_path):
    code = "\n".join(f"    x{i} = {i}" for i in range(81))
    path = tmp_path / "m.py"
    path.write_text(f'def long():\n    """doc\n    more\n    """\n{code}\n\n\ndef short():\n    """{"doc " * 5}\n'
                    + "\n" * 90 + '    """\n    return 1\n')
    assert dict(function_lengths(path)) == {"long": 82, "short": 2}
