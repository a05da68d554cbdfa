"""One process of a 2-process lockstep run (launched by tests/train/test_lockstep.py with torchrun): rank 0 trains on
video prompts only, rank 1 on image and text-only prompts with a constant reward (every group zero-advantage), so
the processes' data differ in every way the engines care about. For each method it trains 2 steps and saves the
first rollout (with the attribution generator's state before it) for the single-process comparison.

ENGINE: ddp, fsdp, zero3, or one of them + "+lora" (LoRA adapters on the language model and the vision tower).

usage: python -m torch.distributed.run --nproc_per_node 2 lockstep_worker.py MODEL_DIR DATA_DIR OUT_DIR ENGINE M1,M2..
       python lockstep_worker.py compare MODEL_DIR DATA_DIR OUT_DIR ENGINE M1,M2..   (one process, afterwards)
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ for builders


def lockstep_reward(completions, prompts=None, **kwargs):
    """Varies within a group on video prompts; constant (zero advantage) on image and text prompts."""
    out = []
    for prompt, completion in zip(prompts, completions):
        has_video = any(part.get("type") == "video" for m in prompt for part in (m.get("content") or [])
                        if isinstance(part, dict))
        out.append(float(len(completion[0]["content"]) % 7) if has_video else 1.0)
    return out


def force_fsdp_on_cpu() -> None:
    """accelerate sets a CPU run up as MULTI_CPU and drops the FSDP plugin the training arguments ask for; put it
    back, so that `accelerator.prepare` shards the model with FSDP2 (`fully_shard`) over the gloo group exactly
    as it does on GPUs. Test-only: the engine code path is accelerate's and torch's own."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from transformers import Trainer

    original = Trainer.create_accelerator_and_postprocess

    def create(self):
        original(self)
        if self.args.fsdp_plugin_args is not None and getattr(self.accelerator.state, "fsdp_plugin", None) is None:
            self.accelerator.state.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            self.is_fsdp_enabled = True

    Trainer.create_accelerator_and_postprocess = create


def allow_deepspeed_on_cpu() -> None:
    """accelerate refuses DeepSpeed on CPU: with use_cpu it never reads ACCELERATE_USE_DEEPSPEED, and without it
    `PartialState._prepare_backend` finds no distributed backend for the CPU device, so DeepSpeed is initialised but
    accelerate counts one process. The ZeRO-3 worker therefore trains with use_cpu=False, and this shim gives a
    DeepSpeed launch on CPU accelerate's own CPU backend choice (gloo, MULTI_CPU; accelerate then switches the type
    to DEEPSPEED itself); DeepSpeed runs on its CPU accelerator (DS_ACCELERATOR=cpu). Test-only: the product code
    asks for use_cpu on a machine without GPUs (train.rundir.cpu_only) and no engine code is patched."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    original = PartialState._prepare_backend

    def prepare(self, cpu=False, sagemaker_dp=False, backend=None):
        chosen, kind = original(self, cpu, sagemaker_dp, backend)
        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        if chosen is None and not cpu and deepspeed and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            return "gloo", DistributedType.MULTI_CPU
        return chosen, kind

    PartialState._prepare_backend = prepare


# configs/accelerate/zero3.yaml's DeepSpeed settings as a DeepSpeed config ("auto": from the training arguments),
# with every parameter partitioned: by default ZeRO-3 keeps parameters below 1e5 elements whole on every process,
# which would be all of the tiny model's (stage3_param_persistence_threshold 0)
ZERO3_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "zero3-test.json"


def lora_options(engine: str):
    """Adapters on the LM and the vision tower for the "+lora" engines ("ddp+lora", "fsdp+lora", "zero3+lora"), else
    None. "fsdp+lora" has no adapter dropout, so that under FSDP ktr's mask is chosen in the loss (ktr.select_in_loss)
    and compared row by row; the others keep peft's default dropout, which keeps the rollout path."""
    from videoktr.models.lora import LoraOptions

    if not engine.endswith("+lora"):
        return None
    return LoraOptions(r=4, vision="lora", dropout=0.0 if engine.startswith("fsdp") else 0.05)


def attribution_options(engine: str, control: str = "none"):
    """The "fsdp" engine also runs issue 12's temporal options (a derangement, averaged over 2 draws per clip):
    K draws widen the attribution pass, which every process must still run in lockstep. Its controls keep the
    defaults, so that under FSDP the mask is chosen in the loss (ktr.select_in_loss needs one draw)."""
    from videoktr.attribution import AttributionOptions

    if engine == "fsdp" and control == "none":
        return AttributionOptions(temporal_strategy="derange", temporal_samples=2)
    return None


def _local(t):
    """A parameter's local values (its shard under FSDP2)."""
    return t.to_local() if hasattr(t, "to_local") else t


def engine_args(engine: str) -> dict:
    engine = engine.removesuffix("+lora")
    if engine == "ddp":
        return {}
    if engine == "fsdp":
        return {"fsdp": "full_shard auto_wrap",
                "fsdp_config": {"version": 2, "reshard_after_forward": True,
                                "transformer_layer_cls_to_wrap": ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]}}
    if engine == "zero3":
        return {"deepspeed": json.loads(ZERO3_CONFIG.read_text()), "use_cpu": False}
    raise ValueError(engine)


def main(model_dir: str, data_dir: str, out_dir: str, engine: str, methods: str) -> None:
    from datasets import Dataset
    from trl import GRPOConfig

    from videoktr.models.factory import load_model, load_processor, suppressed_token_ids
    from videoktr.models.lora import peft_config
    from videoktr.attribution import SelectionOptions
    from videoktr.train.trainer import DynamicSamplingOptions, VideoGRPOTrainer

    rank = int(os.environ["RANK"])
    lora = lora_options(engine)
    if engine.startswith("fsdp"):
        force_fsdp_on_cpu()
    if engine.startswith("zero3"):
        allow_deepspeed_on_cpu()
    rows = json.loads((Path(data_dir) / f"rank{rank}.json").read_text())
    out = Path(out_dir)
    for name in methods.split(","):
        # "<method>[+ds][+<control>]": "+ds" with dynamic sampling (rank 1's groups are all constant, so it
        # resamples until the cap of 3 generation batches while rank 0 may be done sooner: both must run every round
        # together); another suffix is a ktr.control ("ktr+random": method ktr with control random)
        method, *extras = name.split("+")
        sampling = DynamicSamplingOptions(True, "reward", 3) if "ds" in extras else None
        control = next((e for e in extras if e != "ds"), "none")
        torch.manual_seed(0)
        processor = load_processor(model_dir)
        kwargs = {"use_cpu": True, **engine_args(engine)}
        args = GRPOConfig(
            output_dir=str(out / f"{engine}-{name}"), per_device_train_batch_size=8, num_generations=4,
            max_completion_length=8, max_steps=2, report_to=[], logging_steps=1, save_strategy="no",
            learning_rate=1e-3, gradient_checkpointing=True, use_bias_correction_kl=False, seed=0, bf16=False,
            generation_kwargs={"suppress_tokens": suppressed_token_ids(processor.tokenizer)}, **kwargs)
        model = load_model(model_dir, dtype="float32")
        trainer = VideoGRPOTrainer(model=model, processing_class=processor, reward_funcs=[lockstep_reward], args=args,
                                   train_dataset=Dataset.from_list(rows), method=method,
                                   attribution=attribution_options(engine, control),
                                   selection=SelectionOptions(control=control),
                                   peft_config=peft_config(model, lora) if lora else None,
                                   dynamic_sampling=sampling)
        # ZeRO-3/FSDP must run every forward in lockstep; DDP's forwards and generation have no collectives
        assert trainer.lockstep == engine.startswith(("fsdp", "zero3")) and trainer.accelerator.num_processes == 2
        trainer.model.train()
        in_loss = trainer.selects_in_loss()  # ktr.select_in_loss: the mask chosen in the loss on this path
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        real = trainer._generate_and_score_completions
        saved = []

        def recording(inputs, real=real, saved=saved, trainer=trainer):
            state = trainer._attr_generator.get_state()
            batch = real(inputs)
            if not saved:
                saved.append({"state": state, "batch": {k: v for k, v in batch.items() if k in (
                    "prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "videos",
                    "prompt_group", "token_weights")}})
            return batch

        real_select = trainer._loss_time_weights

        def selecting(inputs, logp, entropy, real_select=real_select, saved=saved):
            """ktr.select_in_loss: the mask of the first rollout's micro-batch (TRL shuffled its rows)."""
            weights = real_select(inputs, logp, entropy)
            if saved and "loss" not in saved[0]:
                saved[0]["loss"] = {"prompt_ids": inputs["prompt_ids"], "completion_ids": inputs["completion_ids"],
                                    "keys": [None if v is None else v.key for v in inputs["videos"]],
                                    "weights": weights}
            return weights

        trainer._loss_time_weights = selecting

        trainer._generate_and_score_completions = recording
        trainer.train()
        if lora:  # only adapters train (and they did: rank 0's video groups carry advantages)
            trained = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
            assert trained and all("lora_" in n for n in trained), sorted(trained)[:3]
            moved = [n for n, p in trained.items() if not torch.equal(_local(p), _local(before[n]))]
            assert moved, f"{engine} {method}: no adapter weight changed"
        if engine.startswith("fsdp"):  # the parameters really were sharded (FSDP2: DTensor shards over the 2 processes)
            from torch.distributed.tensor import DTensor

            assert trainer.is_fsdp_enabled
            params = list(trainer.model_wrapped.parameters())
            assert params and all(isinstance(p, DTensor) for p in params), "FSDP did not shard the model"
        if engine.startswith("zero3"):  # the parameters really were partitioned (ZeRO-3: each holds a shard)
            assert trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
            params = list(trainer.model_wrapped.parameters())
            assert params and all(hasattr(p, "ds_id") for p in params), "ZeRO-3 did not partition the model"
            assert all(p.numel() == 0 for p in params if p.ds_numel > 1), "a ZeRO-3 parameter is whole outside a gather"
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(x)) for x in losses), losses
        if sampling is not None:  # rank 1 never fills its batch: every step ran the cap's 3 rounds on both ranks
            logged = [h for h in trainer.state.log_history if "dynamic_sampling/generation_batches" in h]
            assert len(logged) == 2 and all(h["dynamic_sampling/generation_batches"] == 3 for h in logged), logged
            if rank == 1:
                assert all(h["dynamic_sampling/unfilled_groups"] == 2 for h in logged), logged
        assert in_loss == ("loss" in saved[0]), (engine, name, rank, in_loss)
        torch.save(saved[0], out / f"{engine}-{name}-rank{rank}.pt")
        where = "in the loss" if in_loss else "at the rollout"
        print(f"rank {rank}: {engine} {name} done (mask chosen {where})", flush=True)
    from videoktr.train.distributed import end_process_group

    end_process_group()


def compare(model_dir: str, data_dir: str, out_dir: str, engine: str, methods: str) -> None:
    """One process recomputes each recorded rollout's token weights (same perturbation draws) and checks they
    equal what each of the two lockstep processes computed."""
    from builders import make_trainer

    torch.set_num_threads(1)
    out = Path(out_dir)
    for method in methods.split(","):
        for rank in (0, 1):
            record = torch.load(out / f"{engine}-{method}-rank{rank}.pt", weights_only=False)
            batch = record["batch"]
            if rank == 1:
                assert (batch["advantages"] == 0).all(), "rank 1's groups should all have zero advantage"
            rows = json.loads((Path(data_dir) / f"rank{rank}.json").read_text())
            single = make_trainer(model_dir, rows, out / f"single-{method}-{rank}", method=method,
                                  lora=lora_options(engine))
            assert not single.lockstep
            if attribution_options(engine):
                single.attribution_options.temporal_strategy = attribution_options(engine).temporal_strategy
                single.attribution_options.temporal_samples = attribution_options(engine).temporal_samples
            single._attr_generator.set_state(record["state"])
            weights = single._rollout_weights(batch)
            if "token_weights" in batch:  # chosen at the rollout
                assert torch.allclose(weights, batch["token_weights"], atol=1e-5), (engine, method, rank)
            else:  # chosen in the loss (ktr.select_in_loss), from the process's own policy forward: match its rows
                loss = record["loss"]
                keys = [None if v is None else v.key for v in batch["videos"]]
                for j in range(loss["weights"].shape[0]):
                    i = next(i for i in range(weights.shape[0]) if keys[i] == loss["keys"][j]
                             and torch.equal(batch["prompt_ids"][i], loss["prompt_ids"][j])
                             and torch.equal(batch["completion_ids"][i], loss["completion_ids"][j]))
                    assert torch.allclose(weights[i], loss["weights"][j], atol=1e-5), (engine, method, rank, j)
            print(f"{engine} {method} rank {rank}: same weights as one process", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
