"""Package-level properties: cheap import, CLI wiring."""

from __future__ import annotations

import subprocess
import sys

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
