"""Text in and out of a model: the question `Item` and its answer types (`item`), the prompts that ask it
(`prompts`), and reading the answer back out of a response (`extract`). Pure Python, no torch.
May import: nothing else of videoktr (data, rewards and eval all stand on it)."""
