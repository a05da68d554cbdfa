"""Cost of complete-or-absent checkpoints: the time of one checkpoint save with videoktr's completion marker
(a barrier and one small JSON file renamed into place) over TRL's save alone, on the offline model of the given
size, measured in one run (median of --repeats saves each, interleaved).

  .venv/bin/python bench/checkpoint_cost.py [--size small] [--repeats 5]

Writes bench/results/checkpoint_cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' trainer builder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=("tiny", "small"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from builders import make_trainer
    from trl import GRPOTrainer

    from videoktr.models.factory import create_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = create_model_dir(tmp / "model", size=args.size)
        rows = [{"prompt": [{"role": "user", "content": [{"type": "text", "text": "Which colour?"}]}]}]
        trainer = make_trainer(model_dir, rows * 8, tmp, run_identity="bench")
        trainer.create_optimizer_and_scheduler(num_training_steps=10)
        times = {"trl": [], "videoktr": []}
        for i in range(args.repeats):
            for name, save in (("trl", GRPOTrainer._save_checkpoint), ("videoktr", type(trainer)._save_checkpoint)):
                trainer.state.global_step = 2 * i + (name == "videoktr") + 1
                start = time.perf_counter()
                save(trainer, trainer.model, None)
                times[name].append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in (tmp / "out" / f"checkpoint-{trainer.state.global_step}").rglob("*"))
    result = {name: statistics.median(v) for name, v in times.items()}
    result.update(size=args.size, checkpoint_mib=size / 2**20, ratio=result["videoktr"] / result["trl"])
    out = Path(__file__).resolve().parent / "results" / "checkpoint_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"checkpoint of {result['checkpoint_mib']:.1f} MiB: TRL {result['trl']:.3f} s, with completion marker "
          f"{result['videoktr']:.3f} s")
    print(f"checkpoint_save_ratio={result['ratio']:.3f}")


if __name__ == "__main__":
    main()
