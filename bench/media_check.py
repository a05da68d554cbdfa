"""Start-up media check cost: one thread, several threads, and a warm cache, measured in one run.

  .venv/bin/python bench/media_check.py [--clips 24] [--seconds 10] [--size 360x640] [--workers 2]

Writes `--clips` H.264 clips (random-noise frames at 30 fps, the hardest case for the decoder) to a temporary
directory, then times `check_media` over Video-R1 rows that use them: with 1 decoding thread, with `--workers`
threads, and again with the cache the second run wrote. Prints each time relative to the 1-thread check and
writes bench/results/media_check.json. (With N processes each decodes about 1/N of the files on top of this.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from videoktr.data.video import write_video
from videoktr.data.videor1 import check_media


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="360x640", help="HxW of the clips")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.clips):
            frames = rng.integers(0, 256, (int(args.seconds * 30), h, w, 3), dtype=np.uint8)
            write_video(root / f"clip_{i:03d}.mp4", frames, fps=30)
        rows = [{"data_type": "video", "path": f"clip_{i:03d}.mp4"} for i in range(args.clips)]

        def timed(**kw) -> float:
            start = time.perf_counter()
            kept, skipped = check_media(rows, root, progress=False, **kw)
            assert len(kept) == args.clips and not skipped
            return time.perf_counter() - start

        one = timed(workers=1)
        many = timed(workers=args.workers, cache=root / "media_check.jsonl")
        warm = timed(workers=args.workers, cache=root / "media_check.jsonl")
    result = {"clips": args.clips, "seconds": args.seconds, "size": args.size, "workers": args.workers,
              "one_thread_s": one, "threads_s": many, "warm_cache_s": warm,
              "threads_over_one": many / one, "warm_cache_over_one": warm / one}
    out = Path(__file__).parent / "results" / "media_check.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{args.clips} clips of {args.seconds:g} s at {args.size}: 1 thread {one:.2f} s; "
          f"{args.workers} threads {many:.2f} s ({many / one:.2f}x); warm cache {warm:.3f} s ({warm / one:.4f}x)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
