"""transformers Trainer: resuming from a checkpoint of a Qwen2.5-VL model does not load the checkpoint's weights
(transformers issue #43701). Self-contained: needs torch, transformers and accelerate (a tiny random model on
CPU, nothing downloaded).

    python transformers_trainer_resume.py

transformers 5 renames Qwen2-VL/Qwen2.5-VL weights when it loads them (`visual.*` -> `model.visual.*`,
`model.layers.*` -> `model.language_model.layers.*`) and `save_pretrained` writes the original names back, so a
Trainer checkpoint holds the checkpoint-format names. `Trainer._load_from_checkpoint` (what
`train(resume_from_checkpoint=...)` calls) reads that file with a plain `load_state_dict(strict=False)`: the
renamed weights are "unexpected" and skipped, a warning is logged, and training continues from the model's
current weights. Only weights whose name is not renamed load: `lm_head.weight` of a model with untied
embeddings.

The script trains 1 step and saves checkpoint-1, builds a second model with other weights, resumes it from
checkpoint-1 through `Trainer.train(resume_from_checkpoint=...)` (learning rate 0, so its weights stay the ones
it resumed with) and compares every weight with the checkpoint's. It prints AFFECTED (with the weights that
did load) or FIXED.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
import transformers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Trainer, TrainingArguments


def tiny_model(seed: int):
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=0, eos_token_id=1, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=29, video_token_id=30, vision_start_token_id=27, vision_end_token_id=28,
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config)


class Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        ids = torch.arange(i, i + 6) % 27
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def trainer(model, out: Path, learning_rate: float) -> Trainer:
    args = TrainingArguments(output_dir=str(out), max_steps=1, save_steps=1, per_device_train_batch_size=2,
                             learning_rate=learning_rate, weight_decay=0.0, report_to=[], use_cpu=True,
                             logging_strategy="no", disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=Rows())


def main() -> None:
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        trainer(tiny_model(seed=0), out, learning_rate=1e-2).train()
        ckpt = out / "checkpoint-1"
        saved = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(ckpt)).state_dict()  # the weights it holds
        fresh = tiny_model(seed=1)
        with torch.no_grad():  # every weight unlike the checkpoint's (norms and biases start as constants)
            for p in fresh.parameters():
                p.add_(1.0)
        # learning rate 0: whatever the resumed run does, its weights are the ones it resumed with
        trainer(fresh, out, learning_rate=0.0).train(resume_from_checkpoint=str(ckpt))
        resumed = fresh.state_dict()
        loaded = sorted(k for k in saved if torch.equal(resumed[k], saved[k]))
        missing = sorted(k for k in saved if k not in loaded)
    print(f"weights restored from {ckpt.name}: {len(loaded)} of {len(saved)}")
    if missing:
        print("AFFECTED: the resumed model keeps its own weights for " + f"{len(missing)} tensors, e.g. {missing[:3]}")
        print(f"  the only weights restored: {loaded}")
    else:
        print("FIXED")


if __name__ == "__main__":
    main()
