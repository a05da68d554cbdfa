"""Evaluation on the paper's benchmarks: adapters (`benchmarks`), prompts, answer extraction (`extract`),
scoring and reports, a resumable runner and a Hugging Face generator, and the `videoktr eval` command (`cli`).

Importing this package is cheap: torch and transformers are imported only when a model is loaded.
"""
