"""videoktr: reinforcement learning for video-language models that updates only the key tokens (Video-KTR).

Entry points
    the `videoktr` command (`videoktr COMMAND --help` for each; `python -m videoktr.cli` is the same):
        train       GRPO or Video-KTR; with no options, the default run on the built-in synthetic video world
        eval        Video-Holmes, VideoMMMU, MMVU, TempCompass, VideoMME and more, or rescore saved outputs
        explain     one response scored token by token, as an HTML page
        analyze     the paper's analysis figures from a run's rollout log
        filter      the paper's difficulty filter over Video-R1-format rows
        init-model  an offline, randomly initialised Qwen-VL-family model directory
        merge-lora  a LoRA adapter merged into a plain model
    Python (docs/api.md):
        videoktr.train.config.load_config   options from YAML and overrides -> TrainConfig
        videoktr.cli.train                  what `videoktr train` runs: a TrainConfig -> its report
        videoktr.train.run.run, videoktr.world.run.run   a run on data; the synthetic world's default run
        videoktr.attribution.attribute      per-token visual, temporal and entropy scores of responses
        videoktr.attribution.select_key_tokens   the top-r key-token masks
        videoktr.eval.runner.run_generation, videoktr.eval.scoring.score_items   evaluation pieces
        videoktr.models.factory.create_model_dir, load_model, load_processor

Importing the package is cheap; torch, transformers and trl are imported by the submodules that need them.
Layout, in dependency order (each part imports only parts before it; tests/test_layout.py): `core` (the paper's
math, torch only) and `text` (the question Item, prompts, answer reading); `models` (offline factory, family
adapters, perturbations) and `rewards`; `attribution` (scores and key-token masks for a batch of responses) and
`data` (video decoding, Video-R1 rows); `eval` (benchmarks); `filter` and `train` (trainer, configuration, a run
on data); `world` (the synthetic world, its warm start, metrics and the default run); `analysis` (explain,
analyze) and `integrations` (lmms-eval); `cli` (the `videoktr` command).
"""

__version__ = "0.1.0"

from . import _moved

_moved.install()  # old import paths of moved modules, for one release (see _moved.MOVED)
