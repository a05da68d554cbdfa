"""A 20-row Video-R1-format dataset on disk, for tests (importable as `videor1_fixture`: tests/ is on pytest's
pythonpath).

    fx = write_videor1_fixture(tmp_path)            # JSONL; fmt="json" writes a JSON list
    load_videor1(fx.data_file, fx.root)             # -> 18 rows kept, 2 skipped

Media under `root/videos` (small H.264 clips written with PyAV, 56x56, 8 frames at 4 fps = 2 s) and
`root/images`. Paths in the rows are relative ("./videos/clip_03.mp4"), as in Video-R1.
- 20 rows: 9 multiple choice (one of them the image row), 3 numerical, 3 OCR, 2 free-form, 3 regression;
  data sources vary; some rows carry `process`.
- rows 3 and 4 share one video (a media file is probed once per run, not once per row);
- row 6 points at a video that does not exist (`missing`), row 13 at a truncated, undecodable mp4 (`corrupt`);
- row 10 is the image row (a PNG).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MISSING_INDEX = 6
CORRUPT_INDEX = 13
IMAGE_INDEX = 10
SHARED_INDICES = (3, 4)

# (problem_type, problem, options, answer)
_ROWS = [
    ("multiple choice", "What colour dominates the first frame?", ["A. red", "B. green", "C. blue"], "A"),
    ("numerical", "How many distinct colours appear in the clip?", [], "8"),
    ("OCR", "What text is written on the sign?", [], "OPEN 24 HOURS"),
    ("multiple choice", "Does the scene get brighter or darker?", ["A. brighter", "B. darker", "C. neither"], "B"),
    ("multiple choice", "Which event happens last?", ["A. a flash", "B. a fade", "C. a cut", "D. nothing"], "C"),
    ("free-form", "Describe what happens in the video.", [], "the colour of the screen changes every frame"),
    ("multiple choice", "What is the person holding?", ["A. a cup", "B. a phone"], "B"),
    ("regression", "How many seconds does the clip last?", [], "2.0"),
    ("multiple choice", "In which order do the colours appear?", ["A. red then blue", "B. blue then red"], "A"),
    ("numerical", "What is the frame rate of the clip?", [], "4"),
    ("multiple choice", "Which shape is shown in the image?", ["A. circle", "B. square", "C. triangle"], "B"),
    ("OCR", "Read the caption at the bottom.", [], "hello world"),
    ("regression", "Estimate the distance travelled in metres.", [], "12.5"),
    ("numerical", "How many people enter the room?", [], "3"),
    ("multiple choice", "What happens after the flash?", ["A. silence", "B. a crowd cheers", "C. rain"], "A"),
    ("free-form", "Why does the light change?", [], "a cloud passes in front of the sun"),
    ("multiple choice", "Where is the camera?", ["A. indoors", "B. outdoors"], "B"),
    ("regression", "What fraction of the frame is red at the end?", [], "0.25"),
    ("OCR", "What number is on the jersey?", [], "23"),
    ("multiple choice", "What does the dog do first?", ["A. sits", "B. barks", "C. runs", "D. sleeps"], "D"),
]
_SOURCES = ("LLaVA-Video-178K", "STAR", "PerceptionTest", "CLEVRER", "NeXT-QA")


@dataclass
class VideoR1Fixture:
    root: Path
    data_file: Path
    rows: list[dict]
    missing: Path
    corrupt: Path
    image: Path
    videos: list[Path] = field(default_factory=list)

    @property
    def bad_indices(self) -> tuple[int, int]:
        return (MISSING_INDEX, CORRUPT_INDEX)


def clip_frames(seed: int, n: int = 8, size: int = 56) -> np.ndarray:
    """[n, size, size, 3] uint8: a distinct flat colour per frame plus a moving bright square."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 220, size=(n, 3))
    frames = np.broadcast_to(colours[:, None, None, :], (n, size, size, 3)).astype(np.uint8).copy()
    for i in range(n):
        x = (i * size // n) % (size - 8)
        frames[i, 8:16, x:x + 8] = 255
    return frames


def write_videor1_fixture(root: str | Path, fmt: str = "jsonl", size: int = 56, frames: int = 8,
                          fps: float = 4.0) -> VideoR1Fixture:
    from PIL import Image

    from videoktr.data.video import write_video

    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, videos = [], []
    for i, (ptype, problem, options, answer) in enumerate(_ROWS):
        if i == IMAGE_INDEX:
            rel, dtype = "./images/shape_10.png", "image"
        elif i == MISSING_INDEX:
            rel, dtype = "./videos/missing_06.mp4", "video"
        elif i == CORRUPT_INDEX:
            rel, dtype = "./videos/corrupt_13.mp4", "video"
        else:
            k = SHARED_INDICES[0] if i in SHARED_INDICES else i
            rel, dtype = f"./videos/clip_{k:02d}.mp4", "video"
        row = {"problem_id": i + 1, "problem": problem, "data_type": dtype, "problem_type": ptype,
               "options": options, "solution": f"<answer>{answer}</answer>", "path": rel,
               "data_source": _SOURCES[i % len(_SOURCES)]}
        if i % 4 == 0:
            row["process"] = f"<think>Let me look at the clip again. The answer should be {answer}.</think>"
        rows.append(row)
    for rel in dict.fromkeys(r["path"] for r in rows if r["data_type"] == "video"):
        name = Path(rel).name
        if name.startswith(("missing", "corrupt")):
            continue
        videos.append(write_video(root / rel, clip_frames(int(name[5:7]), frames, size), fps=fps))
    # corrupt: the first part of a valid mp4 (the index that follows the frames is cut off)
    corrupt = root / "videos" / "corrupt_13.mp4"
    corrupt.write_bytes(videos[0].read_bytes()[:300])
    image = root / "images" / "shape_10.png"
    img = np.full((size, size, 3), 240, dtype=np.uint8)
    img[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (40, 80, 200)
    Image.fromarray(img).save(image)
    if fmt == "jsonl":
        data_file = root / "videor1_fixture.jsonl"
        data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        data_file = root / "videor1_fixture.json"
        data_file.write_text(json.dumps(rows, indent=1))
    else:
        raise ValueError(f"fmt must be jsonl or json, got {fmt!r}")
    return VideoR1Fixture(root, data_file, rows, root / "videos" / "missing_06.mp4", corrupt, image, videos)
