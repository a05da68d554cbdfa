"""Video-Holmes (TencentARC/Video-Holmes): suspense short films, six options A-F, seven question types.

Question file: `test_Video-Holmes.json` (published on the Hugging Face Hub), a list of rows
`{"video ID", "Question ID", "Question Type", "Question", "Options": {A..F}, "Answer", "Explanation"}`.
Videos: `videos/<video ID>.mp4`. Item id: `<video ID>/<Question ID>`.
"""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, BenchmarkError, Item, discover_files, read_records, require

QUESTION_TYPES = {
    "SR": "Social Reasoning",
    "IMC": "Intention & Motive Chaining",
    "TCI": "Temporal Causal Inference",
    "TA": "Timeline Analysis",
    "MHR": "Multimodal Hint Reasoning",
    "PAR": "Physical Anomaly Reasoning",
    "CTI": "Core Theme Inference",
}
FIELDS = ("video ID", "Question ID", "Question Type", "Question", "Options", "Answer")


class VideoHolmes(Benchmark):
    name = "video_holmes"
    title = "Video-Holmes"
    layout = "test_Video-Holmes.json (at the root or up to 3 folders deep); videos/<video ID>.mp4"

    def discover(self, data_root: Path, tasks) -> list[Path]:
        return discover_files(self.name, data_root, ["test_Video-Holmes.json", "Benchmark/test_Video-Holmes.json"],
                              what="test_Video-Holmes.json")

    def load_file(self, path: Path, tasks) -> list[Item]:
        items = []
        for i, row in enumerate(read_records(path)):
            where = f"row {i}"
            require(row, FIELDS, path, where)
            vid, qid = str(row["video ID"]), str(row["Question ID"])
            where = f"row {i} ({vid}/{qid})"
            options = row["Options"]
            if not isinstance(options, dict) or not options:
                raise BenchmarkError(f"{path}: {where}: 'Options' must be an object {{A: text, ...}}")
            options = {str(k).strip().upper(): str(v).strip() for k, v in options.items()}
            answer = str(row["Answer"]).strip().upper()
            if answer not in options:
                raise BenchmarkError(f"{path}: {where}: answer {row['Answer']!r} is not one of the options "
                                     f"{list(options)}")
            qtype = str(row["Question Type"]).strip()
            items.append(Item(
                id=f"{vid}/{qid}", benchmark=self.name, question=str(row["Question"]).strip(), answer=answer,
                answer_type="mc", options=options, video=f"videos/{vid}.mp4",
                categories={"question_type": qtype},
            ))
        return items


ADAPTER = VideoHolmes()
