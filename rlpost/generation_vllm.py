"""The ``vllm`` generation backend: a vLLM engine colocated in the training process
(``pip install 'rlpost[vllm]'``; a CUDA GPU), as TRL's ``vllm_mode="colocate"``.

- **One engine per process**, created at the first generation from the policy's own checkpoint
  (``policy.config._name_or_path``) with ``distributed_executor_backend="external_launcher"``: it
  joins the training process (rank, world size) instead of spawning workers, and each rank
  generates its own prompts (tensor parallelism is not used).
- **Weights**: :meth:`VLLMBackend.sync_weights`, called after every optimizer step, marks the
  engine's copy stale; before the next generation the policy's weights are copied in, parameter by
  parameter (``load_weights``), then the prefix cache is reset. Under LoRA each adapted weight is
  sent merged, W + (alpha/r) B A, computed out of place (:func:`rlpost.lora.merged_named_parameters`;
  TRL merges in place and unmerges, which does not restore a bf16 base exactly). Deferring the copy to the next generation loads once per rollout when several optimizer
  steps share one (mini-batches, mu > 1), with the same result. A new engine is always loaded from
  the policy (a resumed run's weights are not the checkpoint on disk).
- **Memory**: ``sleep: true`` puts the engine to sleep (level 2: weights and KV cache freed) after
  each generation, so the update gets the memory; weights are woken and re-copied before the next
  generation, the KV cache woken for it (TRL's ``vllm_enable_sleep_mode``).
- **Sampling**: the rollout's temperature, top-p and top-k (greedy: temperature 0); generation stops
  only at the tokenizer's EOS (``ignore_eos`` + ``stop_token_ids``), as the ``hf`` backend does, so
  truncation means the same for both. The sampled tokens' log-probs come back after temperature
  (``logprobs_mode="processed_logprobs"``), to compare with the trained policy's
  (:mod:`rlpost.sampling_correction`).

Settings (the algorithm's ``generation_kwargs``): ``gpu_memory_utilization`` (fraction of the GPU the
engine may take, weights and KV cache; default 0.3), ``sleep`` (default false), ``max_model_len``
(prompt + completion tokens; default: the model's), ``max_num_seqs`` (default: vLLM's),
``enforce_eager`` (no CUDA graphs; default false), ``dtype`` (the engine's; default ``auto``: the
checkpoint's, e.g. bfloat16 for Qwen2.5; copied weights are cast to it).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from rlpost.generation import Completions, GenerationBackend, Sampling
from rlpost.lora import merged_named_parameters


def require_vllm():
    """The ``vllm`` package, or an ImportError that names the extra to install."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError("generation_backend 'vllm' needs vLLM and a CUDA GPU: pip install 'rlpost[vllm]'") from err
    return vllm


class VLLMBackend(GenerationBackend):
    """Colocated vLLM generation (see the module docstring for what it does and its settings)."""

    name = "vllm"

    def __init__(self, gpu_memory_utilization: float = 0.3, sleep: bool = False, max_model_len: int | None = None,
                 max_num_seqs: int | None = None, enforce_eager: bool = False, dtype: str = "auto"):
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"generation_kwargs.gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        for field, value in (("max_model_len", max_model_len), ("max_num_seqs", max_num_seqs)):
            if value is not None and value < 1:
                raise ValueError(f"generation_kwargs.{field} must be >= 1 or None, got {value}")
        self.vllm = require_vllm()
        self.settings = dict(gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                             max_num_seqs=max_num_seqs, enforce_eager=enforce_eager, dtype=dtype)
        self.sleep = sleep
        self.llm = None
        self.stale = True  # the engine's weights are not the policy's: copy before generating
        self.weights_asleep = False
        self.loads = 0  # weight copies so far

    # ------------------------------------------------------------------ weights
    def sync_weights(self, policy: nn.Module) -> None:
        """After an optimizer step: the engine's copy is stale; it is refreshed before the next generation."""
        self.stale = True

    def load_weights(self, policy: nn.Module) -> None:
        """Copy the policy's weights (LoRA merged) into the engine, parameter by parameter."""
        if self.weights_asleep:
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
            self.weights_asleep = False
        model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, param in merged_named_parameters(policy):  # LoRA merged out of place: the policy is untouched
            model.load_weights([(name, param)])
        self.llm.reset_prefix_cache()
        self.stale, self.loads = False, self.loads + 1

    def engine(self, policy: nn.Module):
        """The process's engine, created at the first call (and put to sleep at once with ``sleep``)."""
        if self.llm is None:
            from trl.trainer.utils import ensure_master_addr_port

            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
            device = next(policy.parameters()).device
            os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(device.index or 0))
            ensure_master_addr_port()
            self.llm = self.vllm.LLM(model=policy.config._name_or_path, tensor_parallel_size=1, distributed_executor_backend="external_launcher",
                                     enable_sleep_mode=self.sleep, seed=rank, max_num_batched_tokens=4096,
                                     logprobs_mode="processed_logprobs", **self.settings)
            if self.sleep:
                self.llm.sleep(level=2)
                self.weights_asleep = True
        return self.llm

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, policy: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, *,
                 eos_token_id: int, pad_token_id: int) -> Completions:
        llm = self.engine(policy)
        if self.stale or self.weights_asleep:
            self.load_weights(policy)
        if self.sleep:
            llm.wake_up(tags=["kv_cache"])
        params = self.vllm.SamplingParams(
            n=1, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=sampling.top_p if sampling.do_sample else 1.0,
            top_k=sampling.top_k if sampling.do_sample and sampling.top_k > 0 else -1,
            logprobs=0, ignore_eos=True, stop_token_ids=[eos_token_id])
        prompts = [{"prompt_token_ids": ids[m.bool()].tolist()} for ids, m in zip(prompt_ids, prompt_mask)]
        outputs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
        if self.sleep:
            llm.sleep(level=2)
            self.weights_asleep = True
        return pad_outputs([out.outputs[0] for out in outputs], pad_token_id, prompt_ids.device)


def pad_outputs(outputs: list, pad_token_id: int, device: torch.device) -> Completions:
    """vLLM completions -> [N, T] token ids (right padded with ``pad_token_id``) and [N, T] log-probs of
    the sampled tokens (0 where padded, NaN where vLLM reported none)."""
    T = max(1, max(len(o.token_ids) for o in outputs))
    ids = torch.full((len(outputs), T), pad_token_id, dtype=torch.long)
    logprobs = torch.zeros(len(outputs), T)
    for i, o in enumerate(outputs):
        ids[i, : len(o.token_ids)] = torch.tensor(list(o.token_ids), dtype=torch.long)
        if o.logprobs is not None:
            sampled = [lp[t].logprob if t in lp else float("nan") for t, lp in zip(o.token_ids, o.logprobs)]
            logprobs[i, : len(sampled)] = torch.tensor(sampled)
    return Completions(ids.to(device), logprobs.to(device))
