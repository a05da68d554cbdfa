"""Evaluation on the paper's benchmarks: adapters (`benchmarks`), scoring and reports, a resumable runner, a
Hugging Face generator and the `videoktr eval` command (`cli`); prompts and answer reading live in `text`.
May import: text, data, models (never train). Cheap to import: torch and transformers load with a model.
"""
