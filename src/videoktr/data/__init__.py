"""Data in: video decoding and frame sampling with fps metadata (`video`), and Video-R1-format rows with their
validation, media check and prompts (`videor1`). The synthetic world is its own package, `videoktr.world`.
May import: rewards, text (never models, attribution, eval, train or world)."""
