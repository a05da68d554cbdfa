"""Import paths that moved, kept working for one release (0.2: remove this module and its entry in __init__).

`import videoktr.train.warmstart` (or `from videoktr.data import synthetic`) still works: it warns once with a
DeprecationWarning naming the new path and gives the module that lives there now (the same object, so setting an
attribute on it through either name sets it for both). One table instead of a stub file per old path, so that
a package never holds a file that imports from a layer above it (tests/test_layout.py checks the layers).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

# old module path -> new module path
MOVED = {
    "videoktr.eval.prompts": "videoktr.text.prompts",
    "videoktr.eval.extract": "videoktr.text.extract",
    "videoktr.data.synthetic": "videoktr.world",
    **{f"videoktr.data.synthetic.{name}": f"videoktr.world.{name}"
       for name in ("config", "labels", "long_cot", "questions", "render", "rewards", "sampled_cot")},
    "videoktr.data.synthetic.world": "videoktr.world.build",
    "videoktr.train.warmstart": "videoktr.world.warmstart",
    "videoktr.train.world_filter": "videoktr.world.filter",
    "videoktr.train.world_run": "videoktr.world.run",
    "videoktr.analysis.world": "videoktr.world.metrics",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return None  # a placeholder module; exec_module replaces it in sys.modules

    def exec_module(self, module):
        old = module.__name__
        warnings.warn(f"{old} moved to {self.new}; the old path will be removed in the next release",
                      DeprecationWarning, stacklevel=2)  # warnings skips importlib's frames: the importing line
        # the import system hands out whatever sys.modules holds under the old name once this returns
        sys.modules[old] = importlib.import_module(self.new)


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of MOVED (and nothing else)."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the finder first (a stale folder left at an old path would otherwise import as an empty namespace
    package)."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
