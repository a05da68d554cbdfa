"""Reading trained models and runs: one response explained token by token (`explain`, `page`), the paper's
analysis figures from a run's rollout log (`analyze`, `figures`, `gradients`, `pos`, `rollouts`).
May import: anything but cli and integrations (it stands on world, train, eval and attribution)."""
