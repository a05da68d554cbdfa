"""Plugins that let other evaluation tools run videoktr's frame sampling, prompts and answer reading: `lmms_eval`,
a model for lmms-eval (`lmms-eval --model videoktr`), found through lmms-eval's `lmms_eval.models` entry points.
May import: eval, data, text, models; lmms-eval only when lmms-eval asks for the model class. Nothing imports it.
"""
