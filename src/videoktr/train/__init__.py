"""Training: run configuration (`config`), the video-aware GRPO / Video-KTR trainer (`trainer`), the
`videoktr train` entry point (`run`, `world_run`) and the supervised warm start on the synthetic world
(`warmstart`). Submodules are imported on use (the trainer pulls in TRL)."""
