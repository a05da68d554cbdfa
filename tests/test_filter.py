"""Difficulty filter: per-row accuracy from k samples, kept band, resume after a kill, real tiny-model run."""

from __future__ import annotations

import json

import pytest
from videor1_fixture import write_videor1_fixture

from videoktr.cli import main
from videoktr.filter import FilterOptions, run_filter
from videoktr.rewards import solution_answer


class ScriptedGenerator:
    """Row with problem_id p answers correctly in (p mod 5) of its 4 samples; can crash after n calls."""

    def __init__(self, crash_after: int | None = None):
        self.calls, self.rows_seen, self.crash_after = 0, [], crash_after

    def generate(self, batch, *, max_new_tokens, temperature, top_p):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        out = []
        for i, req in enumerate(batch):
            pid = int(req.item.id)
            self.rows_seen.append(pid)
            right = solution_answer(req.item.answer)
            out.append(f"<think>x</think><answer>{right if (i % 4) < pid % 5 else 'zzz'}</answer>")
        return out


def test_filter_keeps_the_middle_band_and_resumes(tmp_path):
    fx = write_videor1_fixture(tmp_path / "data")
    opts = FilterOptions(samples=4, rows_per_batch=1)
    with pytest.raises(KeyboardInterrupt):
        run_filter(fx.data_file, fx.root, "unused", tmp_path / "out", opts, ScriptedGenerator(crash_after=5),
                   progress=False)
    done = [json.loads(line) for line in (tmp_path / "out" / "accuracies.jsonl").read_text().splitlines()]
    assert len(done) == 5
    gen = ScriptedGenerator()
    summary = run_filter(fx.data_file, fx.root, "unused", tmp_path / "out", opts, gen, progress=False)
    assert not set(gen.rows_seen) & {d["problem_id"] for d in done}  # finished rows are not recomputed
    recs = {json.loads(l)["problem_id"]: json.loads(l) for l in (tmp_path / "out" / "accuracies.jsonl").read_text().splitlines()}
    assert summary["rows"] == len(recs) == 18  # 20 rows - missing - corrupt
    for pid, rec in recs.items():
        expected = min(pid % 5, 4) / 4
        if rec["scores"] and all(s in (0.0, 1.0) for s in rec["scores"]):
            assert rec["accuracy"] == pytest.approx(expected)
        assert rec["kept"] == (0.2 <= rec["accuracy"] <= 0.8)
    kept = [json.loads(l) for l in (tmp_path / "out" / "kept.jsonl").read_text().splitlines()]
    assert sorted(r["problem_id"] for r in kept) == sorted(p for p, r in recs.items() if r["kept"])
    assert all("_row" not in r for r in kept)


def test_a_record_cut_off_by_a_kill_is_recomputed_on_a_clean_line(tmp_path):
    fx = write_videor1_fixture(tmp_path / "data")
    out, opts = tmp_path / "out", FilterOptions(samples=4, rows_per_batch=1)
    with pytest.raises(KeyboardInterrupt):
        run_filter(fx.data_file, fx.root, "unused", out, opts, ScriptedGenerator(crash_after=3), progress=False)
    acc = out / "accuracies.jsonl"
    lines = acc.read_text().splitlines()
    acc.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # the kill cut the third record
    gen = ScriptedGenerator()
    summary = run_filter(fx.data_file, fx.root, "unused", out, opts, gen, progress=False)
    assert json.loads(lines[2])["problem_id"] in gen.rows_seen  # the cut record is computed again
    records = [json.loads(line) for line in acc.read_text().splitlines()]  # every line parses
    assert summary["complete"] and summary["rows"] == len(records) == 18


@pytest.mark.slow
def test_filter_cli_on_tiny_model(tiny_dir, tmp_path, capsys):
    fx = write_videor1_fixture(tmp_path / "data")
    code = main(["filter", "--data", str(fx.data_file), "--data-root", str(fx.root), "--model", str(tiny_dir),
                 "--output-dir", str(tmp_path / "f"), "--samples", "2", "--max-new-tokens", "4", "--rows-per-batch", "4"])
    assert code == 0
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["rows"] == 18 and summary["skipped_samples"] == 2
    assert "kept" in capsys.readouterr().out


def test_shards_split_the_rows_and_the_last_one_merges(tmp_path):
    fx = write_videor1_fixture(tmp_path / "data")
    whole = run_filter(fx.data_file, fx.root, "unused", tmp_path / "one", FilterOptions(samples=4),
                       ScriptedGenerator(), progress=False)
    out, seen = tmp_path / "sharded", []
    for shard in (1, 0, 2):
        gen = ScriptedGenerator()
        summary = run_filter(fx.data_file, fx.root, "unused", out, FilterOptions(samples=4, shard=shard, num_shards=3),
                             gen, progress=False)
        seen.append(set(gen.rows_seen))
        assert (out / f"accuracies.shard-{shard}-of-3.jsonl").is_file()
        assert summary["complete"] == (shard == 2) and (out / "kept.jsonl").is_file() == (shard == 2)
        if shard != 2:
            assert summary["pending"] > 0
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])  # disjoint shares
    assert seen[1] == {p for p in range(1, 21, 3)} - {7}  # shard 0: rows 0, 3, 6, ... (row 7's clip is missing)
    assert {k: v for k, v in summary.items() if k != "kept_file" and k != "num_shards"} == \
        {k: v for k, v in whole.items() if k != "kept_file" and k != "num_shards"}
    assert (out / "kept.jsonl").read_text() == (tmp_path / "one" / "kept.jsonl").read_text()
    # an unsharded run over the sharded results finds every row done
    gen = ScriptedGenerator()
    assert run_filter(fx.data_file, fx.root, "unused", out, FilterOptions(samples=4), gen, progress=False)["complete"]
    assert gen.rows_seen == []


def test_bad_shard_options_are_named(tmp_path, capsys):
    fx = write_videor1_fixture(tmp_path / "data")
    code = main(["filter", "--data", str(fx.data_file), "--data-root", str(fx.root), "--model", "unused",
                 "--output-dir", str(tmp_path / "f"), "--shard", "2", "--num-shards", "2"])
    assert code == 2 and "need 0 <= shard < num_shards" in capsys.readouterr().err
