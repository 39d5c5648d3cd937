"""Generation backends behind one interface: weights synced exactly once per optimizer step, a backend's
completions and sampling log-probs flow into the same Rollout, the hf backend gives transformers'
generate's completions, the settings surface, TRL's sampling metrics and IS correction, and the vLLM
backend's logic against a stand-in ``vllm`` module (vLLM itself needs a GPU)."""

import math
import sys
import types

import pytest
import torch

from rlpost import generation
from rlpost.algorithms import GRPO
from rlpost.generation import Completions, GenerationBackend, HFBackend, Sampling, make_backend
from rlpost.models import build_char_tokenizer, load_policy
from rlpost.rollout import make_rollout, rollout_metrics
from rlpost.scoring import ScorerSet
from tests.conftest import ToyTask, make_trainer, starts_with_seven

EOS, PAD = 1, 0
# char tokenizer ids: '7' -> 10, '1' -> 4, '2' -> 5
FAKE_IDS = torch.tensor([[10, 4, EOS, 5], [10, 10, 10, 10], [4, EOS, 7, 7], [5, 5, 5, 5]])
FAKE_LOGPROBS = torch.tensor([[-0.5, -1.0, -0.25, -3.0], [-0.5, -0.5, -0.5, -0.5],
                              [-2.0, -0.125, -9.0, -9.0], [-1.0, -1.0, -1.0, -1.0]])


class FakeBackend(GenerationBackend):
    """Fixed completions and log-probs (rows cycle through FAKE_IDS); records every call."""

    name = "fake"

    def __init__(self, with_logprobs: bool = True):
        self.with_logprobs, self.generated, self.synced_at, self.model = with_logprobs, 0, [], None

    def generate(self, policy, prompt_ids, prompt_mask, sampling, *, eos_token_id, pad_token_id):
        assert (eos_token_id, pad_token_id) == (EOS, PAD)
        self.generated += 1
        rows = torch.arange(prompt_ids.shape[0]) % len(FAKE_IDS)
        ids = FAKE_IDS[rows, : sampling.max_new_tokens]
        return Completions(ids, FAKE_LOGPROBS[rows, : sampling.max_new_tokens] if self.with_logprobs else None)

    def sync_weights(self, policy):
        self.synced_at.append(self.model.global_step)


@pytest.fixture
def fake_backend(monkeypatch):
    """``generation_backend: fake`` through the registry, as a user's backend would be registered."""
    made = []

    def factory(**settings):
        made.append(FakeBackend(**settings))
        return made[-1]

    monkeypatch.setitem(generation.BACKENDS, "fake", factory)
    return made


def grpo(**kw):
    args = dict(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, beta=0.04,
                save_policy=False)
    args.update(kw)
    return GRPO(**args)


@pytest.mark.parametrize("mini, mu", [(None, 1), (4, 2)])
def test_weights_are_synced_exactly_once_per_optimizer_step(tmp_path, fake_backend, mini, mu):
    model = grpo(generation_backend="fake", mini_batch_size=mini, num_iterations=mu)
    fake_backend[0].model = model
    steps = 2 if mini is None else 8  # 2 rollouts: (8 / mini) * mu optimizer steps each
    make_trainer(tmp_path, max_steps=steps).fit(model, datamodule=ToyTask())
    assert model.global_step == steps
    assert fake_backend[0].synced_at == list(range(1, steps + 1))  # once after each step, never twice
    assert fake_backend[0].generated == 1 + 2 + 2 * 2  # scorer dry run; 2 rollouts; held-out greedy + sampled, before and after


def test_a_backends_completions_and_log_probs_make_the_rollout(tmp_path):
    tok, policy = build_char_tokenizer(), load_policy("builtin:tiny")
    batch = {"prompt": ["1+2=", "3+4="], "answer": ["3", "7"]}
    r = make_rollout(policy, tok, batch, ScorerSet({"toy": starts_with_seven}), num_generations=2,
                     sampling=Sampling(max_new_tokens=4), backend=FakeBackend())
    assert r.completion_ids.tolist() == [[10, 4, EOS, PAD], [10, 10, 10, 10], [4, EOS, PAD, PAD], [5, 5, 5, 5]]
    assert r.completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert r.truncated.tolist() == [False, True, False, True]
    assert r.completions == ["71", "7777", "1", "2222"] and r.rewards.tolist() == [1.0, 1.0, 0.0, 0.0]
    expected = FAKE_LOGPROBS * r.completion_mask  # 0 where masked
    assert torch.equal(r.sampling_logprobs, expected)
    assert r.old_logprobs is not None  # computed to compare with the sampler's (TRL does the same)
    m = rollout_metrics(r, 2)
    delta = (r.old_logprobs - r.sampling_logprobs).abs()[r.completion_mask.bool()]
    torch.testing.assert_close(m["train/sampling/sampling_logp_difference/mean"], delta.mean())
    torch.testing.assert_close(m["train/sampling/sampling_logp_difference/max"], delta.max())
    assert "train/sampling/importance_sampling_ratio/mean" not in m  # no correction asked


def test_the_hf_backend_gives_transformers_generate_completions():
    tok, policy = build_char_tokenizer(), load_policy("builtin:tiny")
    sampling = Sampling(max_new_tokens=5, temperature=0.7, top_k=5)
    enc = tok(["1+2=", "33+44="], return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    ids, mask = enc["input_ids"].repeat_interleave(3, 0), enc["attention_mask"].repeat_interleave(3, 0)
    torch.manual_seed(0)
    direct = policy.eval().generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=5,
                                    temperature=0.7, top_p=1.0, top_k=5, pad_token_id=PAD, eos_token_id=EOS)
    torch.manual_seed(0)
    r = make_rollout(policy, tok, {"prompt": ["1+2=", "33+44="]}, ScorerSet({"toy": starts_with_seven}),
                     num_generations=3, sampling=sampling, backend=HFBackend())
    completions = direct[:, ids.shape[1]:]
    assert torch.equal(r.completion_ids, completions.masked_fill(r.completion_mask == 0, PAD))
    assert r.sampling_logprobs is None and r.old_logprobs is None


def test_importance_sampling_correction_reweights_the_per_token_loss(tmp_path, fake_backend):
    correction = {"mode": "token_truncate", "clip_min": 0.5, "clip_max": 2.0}
    model = grpo(generation_backend="fake", importance_sampling_correction=correction)
    fake_backend[0].model = model
    seen = []
    rollout_fn = model.rollout
    model.rollout = lambda batch: seen.append(rollout_fn(batch)) or seen[-1]
    make_trainer(tmp_path, max_steps=1).fit(model, datamodule=ToyTask())
    r = seen[0]
    diff = (r.old_logprobs - r.sampling_logprobs) * r.completion_mask
    torch.testing.assert_close(r.importance_weights, diff.exp().clamp(0.5, 2.0))
    # mu = 1: ratio 1, so the per-token surrogate is -A, times the weight, plus beta * k3 = 0 (the policy is
    # still the reference at the first step); GRPO's aggregation: token mean per completion, then mean
    w = r.importance_weights * r.completion_mask
    per_seq = (-r.advantages.unsqueeze(1) * w).sum(1) / r.completion_mask.sum(1)
    assert r.advantages.abs().sum() > 0 and not torch.allclose(w, r.completion_mask.float())
    assert math.isclose(model.history[0]["train/policy_loss"], float(per_seq.mean()), rel_tol=1e-5, abs_tol=1e-6)
    row = model.history[0]
    assert row["train/sampling/importance_sampling_ratio/max"] <= 2.0
    assert row["train/sampling/importance_sampling_ratio/min"] >= 0.5


def test_correction_without_sampling_log_probs_is_refused(tmp_path):
    model = grpo(importance_sampling_correction={"mode": "sequence_mask"})
    with pytest.raises(ValueError, match="importance_sampling_correction needs the sampler's log-probs, but the "
                                         "generation backend 'lean' reports none"):
        make_trainer(tmp_path, max_steps=1).fit(model, datamodule=ToyTask())


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="token"), r"importance_sampling_correction.mode 'token' is unknown"),
    (dict(mode="token_truncate", clip_max=None), "needs clip_min or clip_max"),
    (dict(clip_min=3.0, clip_max=2.0), "clip_min=3.0 must be below clip_max=2.0"),
])
def test_bad_correction_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grpo(importance_sampling_correction=kwargs)


# --------------------------------------------------------------------------- the settings surface


def test_unknown_backend_and_settings_are_named():
    with pytest.raises(ValueError, match=r"generation_backend 'vlm' is unknown; choose from \['hf', 'lean', 'vllm'\]"):
        make_backend("vlm")
    for backend in ("lean", "hf"):
        with pytest.raises(ValueError, match=rf"generation_kwargs \{{'sleep': True\}} are not settings of "
                                             rf"generation_backend '{backend}'"):
            grpo(generation_backend=backend, generation_kwargs={"sleep": True})


def test_vllm_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'rlpost\[vllm\]'"):
        grpo(generation_backend="vllm")


# --------------------------------------------------------------------------- the vLLM backend's logic


class FakeLLM:
    """What VLLMBackend uses of vllm.LLM, recording the calls."""

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.loaded = kwargs, [], {}
        worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=self))
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=worker))

    def load_weights(self, weights):
        self.loaded.update((name, t.clone()) for name, t in weights)

    def sleep(self, level):
        self.calls.append(f"sleep{level}")

    def wake_up(self, tags):
        self.calls.append(f"wake:{','.join(tags)}")

    def reset_prefix_cache(self):
        self.calls.append("reset")

    def generate(self, prompts, sampling_params, use_tqdm):
        self.calls.append("generate")
        self.prompts, self.params = prompts, sampling_params
        out = []
        for i, _ in enumerate(prompts):
            ids = [10, 4, EOS] if i % 2 == 0 else [5, 5, 5, 5]
            logprobs = [{t: types.SimpleNamespace(logprob=-0.5 * (k + 1))} for k, t in enumerate(ids)]
            out.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids, logprobs=logprobs)]))
        return out


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.SimpleNamespace(LLM=FakeLLM, SamplingParams=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_vllm_backend_loads_merged_weights_once_per_rollout_and_sleeps(fake_vllm, lora):
    if lora is not None:
        pytest.importorskip("peft", reason="LoRA needs peft: pip install 'rlpost[peft]'")
    from rlpost.lora import merged_named_parameters

    model = grpo(model_name_or_path="builtin:arith-sft", generation_backend="vllm", lora=lora,
                 generation_kwargs={"gpu_memory_utilization": 0.25, "sleep": True, "max_model_len": 64})
    model.configure_model()
    backend, tok = model.backend, model.tokenizer
    if lora is not None:  # adapters that matter: the engine must get W + (alpha/r) B A
        with torch.no_grad():
            for name, p in model.policy.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.01)
    r = make_rollout(model.policy, tok, {"prompt": ["1+2=", "33+44="]}, ScorerSet({"toy": starts_with_seven}),
                     num_generations=2, sampling=Sampling(max_new_tokens=4, temperature=0.9, top_k=0),
                     backend=backend)
    llm = backend.llm
    assert llm.kwargs["model"] == model.policy.config._name_or_path
    assert llm.kwargs["distributed_executor_backend"] == "external_launcher"
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs" and llm.kwargs["gpu_memory_utilization"] == 0.25
    # asleep after creation; weights woken and copied, KV cache woken, generate, asleep again
    assert llm.calls == ["sleep2", "wake:weights", "reset", "wake:kv_cache", "generate", "sleep2"]
    expected = {n: p for n, p in merged_named_parameters(model.policy)}
    assert llm.loaded.keys() == expected.keys() and not any("lora" in n for n in llm.loaded)
    assert all(torch.equal(llm.loaded[n], expected[n]) for n in expected)
    if lora is not None:
        base = dict(load_policy("builtin:arith-sft").named_parameters())
        assert not torch.equal(llm.loaded["model.layers.0.self_attn.q_proj.weight"],
                               base["model.layers.0.self_attn.q_proj.weight"])
    # sampling: the rollout's settings, stop at the tokenizer's EOS only, the sampled token's log-prob
    assert llm.params == dict(n=1, max_tokens=4, temperature=0.9, top_p=1.0, top_k=-1, logprobs=0, ignore_eos=True,
                              stop_token_ids=[tok.eos_token_id])
    assert llm.prompts[0]["prompt_token_ids"] == tok("1+2=", add_special_tokens=False)["input_ids"]  # no padding
    assert r.completion_ids.tolist()[:2] == [[10, 4, EOS, PAD], [5, 5, 5, 5]]
    torch.testing.assert_close(r.sampling_logprobs[:2], torch.tensor([[-0.5, -1.0, -1.5, 0.0],
                                                                      [-0.5, -1.0, -1.5, -2.0]]))
    # an optimizer step marks the copy stale; it is refreshed once, before the next generation
    backend.sync_weights(model.policy)
    backend.sync_weights(model.policy)
    loads = backend.loads
    backend.generate(model.policy, r.prompt_ids, r.prompt_mask, Sampling(4).greedy(), eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id)
    assert backend.loads == loads + 1 and llm.params["temperature"] == 0.0


def test_vllm_settings_are_validated(fake_vllm):
    with pytest.raises(ValueError, match=r"generation_kwargs.gpu_memory_utilization must be in \(0, 1\], got 1.5"):
        grpo(generation_backend="vllm", generation_kwargs={"gpu_memory_utilization": 1.5})
    with pytest.raises(ValueError, match="are not settings of generation_backend 'vllm'"):
        grpo(generation_backend="vllm", generation_kwargs={"tensor_parallel": 2})


# --------------------------------------------------------------------------- mask_truncated_completions


def test_mask_truncated_completions_drops_their_loss_but_not_their_group_statistics():
    """Hand-made rollout (the fake backend's fixed completions, 2 prompts x 4): rows 1, 3, 5, 7 have no
    EOS within 4 tokens. Masked, they keep their rewards and advantages (the group statistics use
    every completion, as TRL) but none of their tokens reaches the loss."""
    from rlpost.algorithms.base import Counts

    model = grpo(beta=0.0)
    model.configure_model()
    batch = {"prompt": ["1+2=", "3+4="], "answer": ["3", "7"]}
    kw = dict(num_generations=4, sampling=Sampling(max_new_tokens=4), backend=FakeBackend(with_logprobs=False))
    plain = make_rollout(model.policy, model.tokenizer, batch, ScorerSet({"toy": starts_with_seven}), **kw)
    masked = make_rollout(model.policy, model.tokenizer, batch, ScorerSet({"toy": starts_with_seven}),
                          mask_truncated_completions=True, **kw)
    truncated = torch.tensor([False, True, False, True] * 2)
    assert torch.equal(masked.truncated, truncated)
    assert not masked.completion_mask[truncated].any()
    assert torch.equal(masked.completion_mask[~truncated], plain.completion_mask[~truncated])
    assert masked.completions == plain.completions and torch.equal(masked.rewards, plain.rewards)
    for r in (plain, masked):
        r.advantages = model.compute_advantages(r)
    assert torch.equal(masked.advantages, plain.advantages)  # r = [1, 1, 0, 0]: A = +-0.866 in each group
    assert masked.advantages[truncated].abs().min() > 0.5  # the truncated rows do carry advantages ...

    def grad(rollout, scale_truncated):
        rollout.advantages = torch.where(truncated, scale_truncated * plain.advantages, plain.advantages)
        model.policy.zero_grad()
        counts = Counts(float(len(rollout)), rollout.completion_mask.sum().float())
        model.minibatch_loss(rollout, counts)[0].backward()
        return torch.cat([p.grad.flatten() for p in model.policy.parameters() if p.grad is not None])

    # ... which change nothing when masked, and change the gradient when not (the control)
    torch.testing.assert_close(grad(masked, 1.0), grad(masked, -5.0), atol=0, rtol=0)
    assert not torch.allclose(grad(plain, 1.0), grad(plain, -5.0))
    # lengths and token counts still count the truncated completions' generated tokens
    m = rollout_metrics(masked, 4)  # lengths 3, 4, 2, 4 (EOS included) in each group: mean 3.25
    assert m["train/completions/mean_length"] == rollout_metrics(plain, 4)["train/completions/mean_length"] == 3.25
