"""FSDP2 sharding in one process (a gloo group of one): what gets wrapped, generation from a sharded
policy, its export, and the strategies rlpost refuses. Two processes: tests/test_scale_out.py."""

import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from rlpost.algorithms import GRPO, PPO
from rlpost.generation import HFBackend, Sampling
from rlpost.sharding import check_strategy, full_state_dict, gathered, is_sharded, shard_models
from tests.conftest import built

TINY = dict(model_name_or_path="builtin:tiny", num_generations=4, max_completion_length=4, save_policy=False)


@pytest.fixture
def mesh():
    """The data-parallel mesh of a one-process gloo group (torn down after the test)."""
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))["data_parallel"]
    finally:
        dist.destroy_process_group()


def units(model) -> set[str]:
    from torch.distributed.fsdp import FSDPModule

    return {name for name, m in model.named_modules() if isinstance(m, FSDPModule)}


BLOCKS = {f"model.layers.{i}" for i in range(4)}  # builtin:tiny has 4 decoder layers


def test_policy_reference_and_separate_critic_are_sharded_per_block_and_whole(mesh):
    model = built(PPO(critic="separate", beta=0.04, **TINY))
    shard_models(model.accounted_models().values(), mesh)
    assert units(model.policy) == units(model.reference) == {"", *BLOCKS}
    # the critic is called through its children: trunk (blocks + root) and head, each its own root
    assert units(model.critic) == {"trunk", "head", *(f"trunk.layers.{i}" for i in range(4))}
    for m in (model.policy, model.reference, model.critic):
        assert all(isinstance(p, DTensor) for p in m.parameters())


def test_value_head_is_sharded_with_the_policy_and_no_reference_at_beta_zero(mesh):
    model = built(PPO(critic="value_head", beta=0.0, **TINY))
    shard_models(model.accounted_models().values(), mesh)
    assert model.reference is None and units(model.policy) == {"", *BLOCKS}
    assert units(model.critic) == {"head"} and is_sharded(model.critic.head)
    assert all(isinstance(p, DTensor) for p in model.policy_parameters())  # one optimizer: all sharded alike


def test_generation_from_a_sharded_policy_gathers_once_and_matches_the_unsharded_policy(mesh, monkeypatch):
    torch.manual_seed(0)
    plain = built(GRPO(beta=0.0, **TINY)).policy
    sharded = built(GRPO(beta=0.0, **TINY)).policy
    shard_models([sharded], mesh)
    prompts = torch.randint(3, 20, (4, 5))
    mask = torch.ones_like(prompts)
    # count the gathers FSDP2 starts (a group of one skips the collective itself; torch's private class, test only)
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

    calls, real = [], FSDPParamGroup.unshard

    def counting(group, *args, **kwargs):
        if group._all_gather_result is None and not group.is_unsharded:
            calls.append(group)
        return real(group, *args, **kwargs)

    monkeypatch.setattr(FSDPParamGroup, "unshard", counting)
    greedy = Sampling(max_new_tokens=6, do_sample=False)
    kw = dict(eos_token_id=-1, pad_token_id=0)  # no EOS: all 6 decoding steps run
    want = HFBackend().generate(plain, prompts, mask, greedy, **kw).completion_ids
    got = HFBackend().generate(sharded, prompts, mask, greedy, **kw).completion_ids
    assert torch.equal(got, want)
    # one all-gather per FSDP unit (4 blocks + root) for the whole decode, not one per unit per token
    assert len(calls) == 5
    # afterwards every unit is sharded again, and a training forward still gathers through the hooks
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    calls.clear()
    sharded(input_ids=prompts).logits.sum().backward()
    assert len(calls) >= 5


def test_gathered_is_a_no_op_for_an_unsharded_model():
    model = built(GRPO(beta=0.0, **TINY)).policy
    with gathered(model):
        pass
    assert not any(isinstance(p, DTensor) for p in model.parameters())


def test_export_gathers_the_full_state_dict_of_a_sharded_policy(mesh, tmp_path):
    torch.manual_seed(0)
    plain = built(GRPO(beta=0.0, **TINY)).policy
    sharded = built(GRPO(beta=0.0, **TINY)).policy
    shard_models([sharded], mesh)
    state = full_state_dict(sharded)
    assert full_state_dict(plain) is None  # nothing to gather
    for name, tensor in plain.state_dict().items():
        assert torch.equal(state[name], tensor), name
    sharded.save_pretrained(tmp_path, state_dict=state)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), plain.parameters()))


def test_fsdp1_strategy_is_refused_naming_the_preset():
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ValueError, match=r"FSDPStrategy \(FSDP1\).*manual optimization.*configs/trainer/fsdp.yaml"):
        check_strategy(FSDPStrategy(), None)


def test_a_data_parallel_mesh_smaller_than_the_world_is_refused_naming_the_fields():
    """ModelParallelStrategy() on one node of 2 GPUs: data_parallel_size 1, tensor_parallel_size 2."""
    size = {"data_parallel": 1, "tensor_parallel": 2}
    fake_mesh = type("Mesh", (), {"mesh_dim_names": ("data_parallel", "tensor_parallel"),
                                  "__getitem__": lambda self, k: SimpleNamespace(size=lambda: size[k])})()
    with pytest.raises(ValueError, match=r"data_parallel_size=1, tensor_parallel_size=2\) on 2 processes.*"
                                         r"data_parallel_size=2 and tensor_parallel_size=1"):
        check_strategy(SimpleNamespace(world_size=2), fake_mesh)
    size["data_parallel"], size["tensor_parallel"] = 2, 1
    check_strategy(SimpleNamespace(world_size=2), fake_mesh)  # every process data-parallel: accepted


def test_held_out_evaluation_pads_a_short_shard_with_uncounted_greedy_batches():
    """Under FSDP every rank must call generate equally often: a shard of 1 prompt padded to 3 (batches of 1)
    generates 3 x 2 times (greedy and sampled per batch), the padding greedy, and counts 1 prompt."""
    from datasets import Dataset

    from rlpost.evaluation import HeldOutEvaluator
    from tests.conftest import ToyTask

    model = built(GRPO(beta=0.0, **TINY))
    calls = []

    class Counting(HFBackend):
        def generate(self, policy, prompt_ids, prompt_mask, sampling, **kw):
            calls.append(sampling.do_sample)
            return super().generate(policy, prompt_ids, prompt_mask, sampling, **kw)

    task = ToyTask()
    evaluator = HeldOutEvaluator(task.accuracy_scorer(), task.scorers(), max_completion_length=2, batch_size=1,
                                 temperature=1.0, backend=Counting())
    shard = Dataset.from_dict({"prompt": ["1+2="], "answer": ["3"]})
    result = evaluator(model.policy, model.tokenizer, shard, pad_to=3)
    assert calls == [False, True, False, False, False, False] and result["n"] == 1
    with pytest.raises(ValueError, match="shard of the held-out split is empty"):
        evaluator(model.policy, model.tokenizer, shard.select([]), pad_to=1)
