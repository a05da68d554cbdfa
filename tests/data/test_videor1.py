"""Video-R1-format data: loading, validation errors that name file/row/field, the skip policy for bad rows and
bad media (never substituted), the skip record file, and the training prompt."""

from __future__ import annotations

import json
import logging
import re

import pytest
from videor1_fixture import CORRUPT_INDEX, IMAGE_INDEX, MISSING_INDEX, SHARED_INDICES, write_videor1_fixture

from videoktr.data import video as video_mod
from videoktr.data import videor1 as videor1_mod
from videoktr.data.videor1 import (ROW_REF, DataError, SkippedSample, build_prompt, check_media, load_rows,
                                   load_videor1, resolve_media, validate_row, without_row_ref, write_skipped)
from videoktr.text.prompts import ANSWER_SUFFIX, REASONING_INSTRUCTION


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_videor1_fixture(tmp_path_factory.mktemp("videor1"))


def _row(**over):
    row = {"problem_id": 1, "problem": "What happens?", "data_type": "video", "problem_type": "multiple choice",
           "options": ["A. one", "B. two"], "solution": "<answer>B</answer>", "path": "./videos/a.mp4",
           "data_source": "STAR"}
    row.update(over)
    return {k: v for k, v in row.items() if v is not _DROP}


_DROP = object()


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------- the fixture


@pytest.mark.parametrize("fmt, ref", [("jsonl", "line {n}"), ("json", "index {i}")])
def test_fixture_loads_and_skips_the_two_bad_media_rows(tmp_path, fmt, ref, caplog):
    fx = write_videor1_fixture(tmp_path, fmt=fmt)
    with caplog.at_level(logging.WARNING, logger="videoktr.data.videor1"):
        data = load_videor1(fx.data_file, fx.root, progress=False)
    assert len(fx.rows) == 20 and len(data.rows) == 18 and data.skipped_count == 2
    assert data.skipped_by_kind() == {"missing_media": 1, "undecodable_media": 1}
    missing, corrupt = data.skipped
    assert (missing.problem_id, missing.path) == (MISSING_INDEX + 1, "./videos/missing_06.mp4")
    assert missing.row == f"{fx.data_file} " + ref.format(n=MISSING_INDEX + 1, i=MISSING_INDEX)
    assert "not found" in missing.reason and str(fx.missing) in missing.reason
    assert corrupt.problem_id == CORRUPT_INDEX + 1 and str(fx.corrupt) in corrupt.reason
    assert "missing_06.mp4" in caplog.text and "corrupt_13.mp4" in caplog.text and "skipped 2 of 20" in caplog.text
    # never substituted: the kept rows are the file's other rows, unchanged and in order, with their own media
    kept_ids = [r["problem_id"] for r in data.rows]
    assert kept_ids == [i + 1 for i in range(20) if i not in (MISSING_INDEX, CORRUPT_INDEX)]
    for row in data.rows:
        original = fx.rows[row["problem_id"] - 1]
        assert without_row_ref(row) == {**original, "options": original["options"]}
        assert resolve_media(row, fx.root).is_file()
    kinds = {r["problem_type"] for r in data.rows}
    assert kinds == {"multiple choice", "numerical", "OCR", "free-form", "regression"}
    assert [r["data_type"] for r in data.rows].count("image") == 1


def _counting_decoder(monkeypatch) -> list[str]:
    calls = []
    real = video_mod.read_video

    def counting(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(video_mod, "read_video", counting)
    return calls


def test_each_unique_media_file_is_probed_once(fx, monkeypatch):
    calls = _counting_decoder(monkeypatch)
    rows, _ = load_rows(fx.data_file)
    kept, skipped = check_media(rows, fx.root, progress=False)
    shared = str(resolve_media(rows[SHARED_INDICES[0]], fx.root))
    assert calls.count(shared) == 1 and len(calls) == len(set(calls))
    # every video that exists is decoded once (the missing one never reaches the decoder; the image uses PIL)
    assert len(calls) == 20 - len(SHARED_INDICES) + 1 - 2
    assert len(kept) == 18 and len(skipped) == 2
    kept2, skipped2 = check_media(rows, fx.root, progress=False, workers=2)
    assert [r["problem_id"] for r in kept2] == [r["problem_id"] for r in kept] and skipped2 == skipped


def test_write_skipped_jsonl(fx, tmp_path):
    data = load_videor1(fx.data_file, fx.root, progress=False)
    path = data.write_skipped(tmp_path / "run" / "skipped_samples.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["problem_id"] for r in records] == [MISSING_INDEX + 1, CORRUPT_INDEX + 1]
    assert set(records[0]) == {"row", "problem_id", "path", "reason", "kind"}
    assert records[1]["kind"] == "undecodable_media" and "corrupt_13.mp4" in records[1]["reason"]
    assert write_skipped(tmp_path / "empty.jsonl", []).read_text() == ""


def test_images_and_corrupt_images(fx, tmp_path):
    rows, _ = load_rows(fx.data_file)
    image_row = rows[IMAGE_INDEX]
    assert image_row["data_type"] == "image"
    kept, skipped = check_media([image_row], fx.root, progress=False)
    assert kept == [image_row] and skipped == []
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "shape_10.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    kept, skipped = check_media([image_row], tmp_path, progress=False)
    assert kept == [] and skipped[0].kind == "undecodable_media" and "cannot decode image" in skipped[0].reason


def test_absolute_media_paths_and_a_wrong_data_root(fx, tmp_path, caplog):
    rows, _ = load_rows(fx.data_file)
    absolute = dict(rows[0], path=str(fx.videos[0]))
    kept, skipped = check_media([absolute], tmp_path / "elsewhere", progress=False)
    assert kept == [absolute] and not skipped
    with caplog.at_level(logging.WARNING, logger="videoktr.data.videor1"):
        kept, skipped = check_media(rows, tmp_path / "elsewhere", progress=False, max_warnings=3)
    assert kept == [] and len(skipped) == 20
    assert caplog.text.count("skipping ") == 3 and "is the data root right?" in caplog.text
    with pytest.raises(ValueError, match="relative; give a data root"):
        resolve_media(rows[0], None)


# --------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("row, field, message", [
    (_row(problem_type=_DROP), "problem_type", "missing"),
    (_row(path=None), "path", "is null"),
    (_row(data_type="audio"), "data_type", "unknown value 'audio'"),
    (_row(problem_type="essay"), "problem_type", "unknown value 'essay'; expected one of: multiple choice"),
    (_row(solution="B"), "solution", "no <answer>"),
    (_row(solution="<answer> </answer>"), "solution", "empty"),
    (_row(solution="<answer>E</answer>"), "solution", "not one of the option labels"),
    (_row(options=["one", "two"]), "options", "letter label"),
    (_row(options=[]), "options", "needs options"),
    (_row(options="A. one"), "options", "list of strings"),
    (_row(problem_type="numerical", options=[], solution="<answer>many</answer>"), "solution", "not a number"),
    (_row(problem=""), "problem", "non-empty string"),
])
def test_invalid_rows_name_file_row_and_field(tmp_path, row, field, message):
    good = _row(problem_id=0)
    path = _write_jsonl(tmp_path / "train.jsonl", [good, "", good, dict(row, problem_id=77)])
    with pytest.raises(DataError) as err:
        load_rows(path)
    text = str(err.value)
    assert text.startswith(f"{path} line 4 (problem_id 77): field {field!r}:"), text
    assert message in text


def test_malformed_json_line_and_json_list_index(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [_row(), '{"problem_id": 2, "problem": ', _row()])
    with pytest.raises(DataError, match=r"train\.jsonl line 2: malformed JSON"):
        load_rows(path)
    listed = tmp_path / "train.json"
    listed.write_text(json.dumps([_row(), _row(), _row(data_type="gif", problem_id="x9")]))
    with pytest.raises(DataError, match=r"train\.json index 2 \(problem_id 'x9'\): field 'data_type'"):
        load_rows(listed)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"problem_id": 1,]')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON \(line 1"):
        load_rows(broken, on_error="skip")  # a file that does not parse cannot be skipped row by row
    with pytest.raises(DataError, match="data file not found"):
        load_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="expected a JSON object"):
        load_rows(_write_jsonl(tmp_path / "list_row.jsonl", ['["a", "b"]']))


def test_on_error_skip_records_invalid_rows(tmp_path, caplog):
    rows = [_row(problem_id=1), '{"oops"', _row(problem_id=3, problem_type="essay"), _row(problem_id=4)]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="videoktr.data.videor1"):
        kept, skipped = load_rows(path, on_error="skip")
    assert [r["problem_id"] for r in kept] == [1, 4]
    assert [(s.row, s.problem_id, s.kind) for s in skipped] == [
        (f"{path} line 2", None, "invalid_row"), (f"{path} line 3", 3, "invalid_row")]
    assert skipped[1].path == "./videos/a.mp4" and "'problem_type'" in skipped[1].reason
    assert "invalid row" in caplog.text
    with pytest.raises(ValueError, match="on_error must be one of raise, skip"):
        load_rows(path, on_error="ignore")


def test_rows_are_canonicalised(tmp_path):
    row = validate_row(_row(problem_type="Multiple_Choice", data_type="Video", data_source=_DROP), "f line 1")
    assert row["problem_type"] == "multiple choice" and row["data_type"] == "video" and row["data_source"] == ""
    assert row[ROW_REF] == "f line 1"
    ocr = validate_row(_row(problem_type="ocr", options=_DROP, solution="<answer>EXIT</answer>"), "f line 2")
    assert ocr["problem_type"] == "OCR" and ocr["options"] == []
    free = validate_row(_row(problem_type="free form", options=None, solution="<answer>x</answer>",
                             process="<think>hm</think>", extra=5), "f line 3")
    assert free["problem_type"] == "free-form" and free["process"] == "<think>hm</think>" and free["extra"] == 5
    reg = validate_row(_row(problem_type="regression", options=[], solution="<answer>1,250.5</answer>"), "x")
    assert reg["solution"] == "<answer>1,250.5</answer>"  # the solution itself is kept as written


# --------------------------------------------------------------------------------------------- prompt


def test_prompt_layout_and_type_suffixes(fx):
    rows, _ = load_rows(fx.data_file)
    mc = rows[0]
    lines = build_prompt(mc).split("\n")
    assert lines[0] == mc["problem"] and lines[1] == "Options:"
    assert lines[2:5] == mc["options"] and lines[5] == REASONING_INSTRUCTION + ANSWER_SUFFIX["mc"]
    suffix = {"numerical": "numeric", "OCR": "ocr", "free-form": "free_form", "regression": "regression"}
    for row in rows:
        text = build_prompt(row)
        if row["problem_type"] != "multiple choice":
            assert "Options:" not in text and text.endswith(ANSWER_SUFFIX[suffix[row["problem_type"]]])
        assert text.count("<think>") == 1 and "<answer>" in text
    assert "transcribed exactly" in build_prompt(rows[2]) and "free text" in build_prompt(rows[5])
    with pytest.raises(DataError, match="unknown value 'essay'"):
        build_prompt(dict(mc, problem_type="essay"))


def test_prompt_matches_the_evaluation_prompt_of_the_same_row(fx):
    """Training and evaluation see the same text for choice and number rows (the eval adapter reads the same
    file format)."""
    from videoktr.eval.benchmarks import load_items
    from videoktr.text.prompts import build_prompt as eval_prompt

    rows, _ = load_rows(fx.data_file)
    items = {it.id: it for it in load_items("videor1", questions=fx.data_file)}
    for row in rows:
        if row["problem_type"] in ("multiple choice", "numerical", "regression"):
            assert build_prompt(row) == eval_prompt(items[str(row["problem_id"])])


def test_skipped_sample_is_plain_data():
    s = SkippedSample("f line 3", 3, "./v.mp4", "video file not found: /d/v.mp4")
    assert s.kind == "missing_media" and s.to_json()["reason"].startswith("video file not found")


def test_media_cache_reuses_results_until_a_file_or_the_settings_change(fx, tmp_path, monkeypatch):
    rows, _ = load_rows(fx.data_file)
    cache = tmp_path / "cache" / "media_check.jsonl"
    first = check_media(rows, fx.root, progress=False, cache=cache)
    calls = _counting_decoder(monkeypatch)
    assert check_media(rows, fx.root, progress=False, cache=cache) == first and calls == []
    # the missing file is probed again (it may have appeared); it never reaches the decoder
    lines = cache.read_text().splitlines()
    assert len(lines) == 20 - len(SHARED_INDICES) + 1 - 1  # every unique file that exists
    # a replaced clip (new size/mtime) is decoded again, and only it
    corrupt = resolve_media(rows[CORRUPT_INDEX], fx.root)
    good = resolve_media(rows[0], fx.root)
    corrupt.write_bytes(good.read_bytes())
    kept, skipped = check_media(rows, fx.root, progress=False, cache=cache)
    assert calls == [str(corrupt)] and len(kept) == 19 and [s.kind for s in skipped] == ["missing_media"]
    # other probe settings: nothing is reused
    calls.clear()
    check_media(rows, fx.root, progress=False, cache=cache, max_frames=8)
    assert len(calls) == len(lines) - 1  # the image goes through PIL
    # a damaged cache line is ignored, not fatal
    cache.write_text("{not json\n" + cache.read_text())
    calls.clear()
    assert check_media(rows, fx.root, progress=False, cache=cache, max_frames=8)[1] == skipped and calls == []


def test_processes_share_out_the_media_check(fx, tmp_path, monkeypatch):
    """Two ranks (threads here, with an all-gather built on a barrier) each decode a disjoint share of the
    files; both get the one-process answer, and rank 0's cache decides for both."""
    import threading

    rows, _ = load_rows(fx.data_file)
    expected = check_media(rows, fx.root, progress=False)
    cache = tmp_path / "media_check.jsonl"
    check_media(rows[:3], fx.root, progress=False, cache=cache)  # rank 0 knows three files already
    calls = _counting_decoder(monkeypatch)
    slots, barrier, got, decoded = [None, None], threading.Barrier(2), {}, {0: [], 1: []}

    def rank_main(rank):
        def gather(value):
            slots[rank] = value
            barrier.wait()
            out = list(slots)
            barrier.wait()
            return out

        got[rank] = check_media(rows, fx.root, progress=False, rank=rank, world_size=2, gather=gather,
                                cache=cache)

    real_probe = videor1_mod.probe_media

    def probe(path, *a, **k):
        decoded[int(threading.current_thread().name[-1])].append(str(path))
        return real_probe(path, *a, **k)

    monkeypatch.setattr(videor1_mod, "probe_media", probe)
    threads = [threading.Thread(target=rank_main, args=(r,), name=f"rank{r}") for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert got[0] == expected and got[1] == expected
    unique = {str(resolve_media(r, fx.root)) for r in rows}
    known = {str(resolve_media(r, fx.root)) for r in rows[:3]}
    assert decoded[0] and decoded[1] and not set(decoded[0]) & set(decoded[1])
    assert sorted(decoded[0] + decoded[1]) == sorted(unique - known)  # each unknown file once, none known
    assert len(calls) == len(unique - known) - 2  # the missing file and the image never reach read_video
    assert len(cache.read_text().splitlines()) == len(unique) - 1  # rank 0 recorded all (not the missing one)
    with pytest.raises(ValueError, match="needs a gather function"):
        check_media(rows, fx.root, progress=False, rank=0, world_size=2)


def test_text_rows_have_no_media(tmp_path):
    """Mixed batches (video, image and text-only rows, as Video-R1 mixes image and video data): a text row needs
    no path, is never probed, and a text row that names a file is an error naming the field."""
    import json

    from videoktr.data.videor1 import DataError, load_videor1

    base = {"problem": "What is 2 + 3?", "problem_type": "numerical", "solution": "<answer>5</answer>"}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"problem_id": 1, "data_type": "text", **base}) + "\n")
    data = load_videor1(path, tmp_path)
    assert [r["problem_id"] for r in data.rows] == [1] and data.media_check["files"] == 0
    path.write_text(json.dumps({"problem_id": 2, "data_type": "text", "path": "a.mp4", **base}) + "\n")
    with pytest.raises(DataError, match="line 1.*'path'.*text row"):
        load_videor1(path, tmp_path)


@pytest.mark.parametrize("text", ["", "\n\n", "[]"])
def test_a_file_without_rows_is_an_error_naming_it(tmp_path, text):
    """Issue 20 item 12: an empty file loaded as no rows and no skipped rows (the run then pointed at an empty
    skipped.jsonl); `videoktr filter` and the Python API get the same clear error as `train`'s preflight."""
    path = tmp_path / "rows.json"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: the file holds no rows"):
        load_rows(path, on_error="skip")
