"""Models: the offline factory and loading (`factory`), what differs per model family (`adapters`), perturbed
encoder outputs (`perturb`), 3D position schemes (`positions`), LoRA (`lora`) and a model's recorded settings (`info`).
May import: core (no other part of videoktr); transformers and peft."""
