"""Training: the run configuration (`config`), the video-aware GRPO / Video-KTR trainer (`trainer`) and a run on
Video-R1-format data (`run`), with its directory's lifecycle, checkpoints and report. Imported on use (TRL).
May import: attribution, data, rewards, text, models, core (never world, eval or analysis)."""
