"""Plugins that let other evaluation tools run videoktr's frame sampling, prompts and answer extraction.

`lmms_eval`: a model for lmms-eval (`lmms-eval --model videoktr --model_args pretrained=DIR`), registered through
lmms-eval's `lmms_eval.models` entry points. lmms-eval itself is never imported by the rest of the package.
"""
