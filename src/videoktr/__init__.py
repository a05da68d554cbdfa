"""videoktr: reinforcement learning for video-language models that updates only the key tokens (Video-KTR).

Importing the package is cheap; torch, transformers and trl are imported by the submodules that need them.
Layout: `core` (the paper's math, torch only), `models` (offline factory, family adapters, perturbations),
`data` (video decoding), `attribution` (scores and key-token masks for a batch of responses),
`eval` (benchmarks), `cli` (the `videoktr` command).
"""

__version__ = "0.1.0"
