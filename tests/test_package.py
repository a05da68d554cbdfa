"""Package-level properties: cheap import, CLI wiring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from videoktr.cli import build_parser, main


def test_import_is_lazy():
    """`import videoktr` must not pull in torch, transformers or trl (keeps it well under 2 s)."""
    code = ("import sys, videoktr; heavy = [m for m in ('torch', 'transformers', 'trl', 'av') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_help_lists_commands(capsys):
    parser = build_parser()
    help_text = parser.format_help()
    for cmd in ("init-model", "train", "eval"):
        assert cmd in help_text


def test_init_model_cli(tmp_path, capsys):
    assert main(["init-model", "--size", "tiny", "--output", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()
    assert main(["init-model", "--output", str(tmp_path / "m2"), "--corpus", str(tmp_path / "none.txt")]) == 2
    assert "none.txt" in capsys.readouterr().err


def test_package_docstring_names_the_entry_points():
    """Issue 20 item 12: help(videoktr) named no entry points. Every subcommand and the Python entry points of
    docs/api.md are named, and each named Python function exists."""
    import importlib
    import re

    import videoktr

    doc = videoktr.__doc__
    commands = build_parser()._subparsers._group_actions[0].choices
    assert all(re.search(rf"^\s+{re.escape(name)}\s", doc, re.M) for name in commands), sorted(commands)
    for dotted in re.findall(r"videoktr(?:\.\w+)+", doc):
        module, _, name = dotted.rpartition(".")
        if dotted == "videoktr.cli":
            continue
        assert hasattr(importlib.import_module(module), name), dotted
    assert "videoktr.train.run.run" in doc and "videoktr.attribution.attribute" in doc


def test_make_refuses_another_python_at_once(tmp_path):
    """Issue 20: `make setup PYTHON=python3.12` sat in pip's dependency resolution for over 10 minutes. The Makefile
    checks the interpreter before it creates .venv and names the one to use."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    fake = tmp_path / "python3.12"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Python 3.12.1"; exit 0; fi\n'
                    "exec python3 -c 'import sys; sys.exit(1)'\n")
    fake.chmod(0o755)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(["make", "-s", "-C", str(root), "check-python", f"PYTHON={fake}"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "videoktr needs Python 3.11" in proc.stderr and "is Python 3.12.1" in proc.stderr
    ok = subprocess.run(["make", "-s", "-C", str(root), "check-python", f"PYTHON={sys.executable}"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    # creating the venv goes through the check
    makefile = (root / "Makefile").read_text()
    assert "check-python PYTHON=$(PYTHON)" in makefile.split("$(STAMP): pyproject.toml")[1].split("\n\n")[0]
