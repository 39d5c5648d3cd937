import torch

from rlpost.generation import Sampling
from rlpost.losses import group_advantages
from rlpost.models import build_char_tokenizer, load_policy
from rlpost.rollout import Rollout, completion_logprobs, concat_rollouts, make_rollout, mask_after_eos
from rlpost.scoring import ScorerSet
from tests.conftest import starts_with_seven


def test_mask_after_eos_hand_case():
    eos = 1
    ids = torch.tensor([[5, 1, 7, 7], [5, 6, 7, 8], [1, 0, 0, 0]])
    mask, truncated = mask_after_eos(ids, eos)
    # row 0: EOS at t=1 -> tokens 0,1 count; row 1: no EOS -> all count, truncated; row 2: EOS first.
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def _rollout(policy, tok, **kw):
    batch = {"prompt": ["1+2=", "33+44="], "answer": ["3", "77"]}
    return make_rollout(policy, tok, batch, ScorerSet({"toy": starts_with_seven}), num_generations=4,
                        sampling=Sampling(max_new_tokens=5), **kw)


def test_rollout_record_shapes_groups_and_masks():
    torch.manual_seed(0)
    tok, policy = build_char_tokenizer(), load_policy("builtin:tiny")
    r = _rollout(policy, tok)
    assert len(r) == 8 and r.completion_ids.shape[0] == 8 and r.completion_ids.shape[1] <= 5
    assert r.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert r.prompts == ["1+2="] * 4 + ["33+44="] * 4 and r.columns["answer"] == ["3"] * 4 + ["77"] * 4
    # left padding: the short prompt's first tokens are padding
    assert r.prompt_mask[0].tolist()[:2] == [0, 0] and r.prompt_mask[4].all()
    # nothing after EOS counts, and masked positions hold padding
    for ids, m, trunc in zip(r.completion_ids, r.completion_mask, r.truncated):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()
        assert (ids[n:] == tok.pad_token_id).all()
        assert bool(trunc) == (tok.eos_token_id not in ids[:n].tolist())
    assert r.completions[0] == tok.decode(r.completion_ids[0][: int(r.completion_mask[0].sum())], skip_special_tokens=True)
    assert torch.equal(r.rewards, torch.tensor([float(c.startswith("7")) for c in r.completions]))
    # beta = 0 and mu = 1 with one step: neither extra forward happens
    assert r.old_logprobs is None and r.ref_logprobs is None


def test_old_logprobs_shortcut_equals_explicit_forward():
    torch.manual_seed(0)
    tok, policy = build_char_tokenizer(), load_policy("builtin:tiny")
    r = _rollout(policy, tok, need_old_logprobs=True, reference=policy)
    fresh, *_ = completion_logprobs(policy, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    m = r.completion_mask.bool()
    torch.testing.assert_close(fresh[m], r.old_logprobs[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(r.ref_logprobs[m], r.old_logprobs[m], atol=1e-5, rtol=0)


def test_left_padding_does_not_change_logprobs():
    torch.manual_seed(0)
    tok, policy = build_char_tokenizer(), load_policy("builtin:tiny")
    comp = torch.tensor([[9, 10, 1]])
    cmask = torch.ones_like(comp)
    alone = tok(["1+2="], return_tensors="pt")
    padded = tok(["1+2=", "123+456="], return_tensors="pt", padding=True)
    lp_alone, *_ = completion_logprobs(policy, alone["input_ids"], alone["attention_mask"], comp, cmask)
    lp_pad, *_ = completion_logprobs(policy, padded["input_ids"][:1], padded["attention_mask"][:1], comp, cmask)
    assert padded["attention_mask"][0, 0] == 0  # really padded
    torch.testing.assert_close(lp_alone, lp_pad, atol=1e-5, rtol=0)


def test_rollout_select_and_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    tok, policy = build_char_tokenizer(), load_policy("builtin:tiny")
    r = _rollout(policy, tok)
    r.advantages = group_advantages(r.rewards, 4)
    sub = r.select(torch.tensor([5, 1]))
    assert sub.prompts == [r.prompts[5], r.prompts[1]] and sub.columns["answer"] == ["77", "3"]
    assert torch.equal(sub.completion_ids, r.completion_ids[[5, 1]]) and torch.equal(sub.advantages, r.advantages[[5, 1]])
    r.save(tmp_path / "r.pt")
    back = Rollout.load(tmp_path / "r.pt")
    assert torch.equal(back.completion_ids, r.completion_ids) and back.completions == r.completions


def test_select_keeps_whole_groups_slices_ranges_and_takes_a_host_index():
    torch.manual_seed(0)
    tok, policy = build_char_tokenizer(), load_policy("builtin:tiny")
    r = _rollout(policy, tok)  # 2 prompts x G=4
    assert r.group_size == 4
    whole = r.select(torch.arange(8))
    assert whole.group_size == 4 and whole.completion_ids.data_ptr() == r.completion_ids.data_ptr()  # a view
    second = r.select([4, 5, 6, 7])
    assert second.group_size == 4 and second.prompts == ["33+44="] * 4
    assert r.select([4, 5, 6, 7, 0, 1, 2, 3]).group_size == 4  # whole groups, in another order
    assert r.select([5, 1]).group_size == 1 and r.select([0, 1]).group_size == 1  # not whole groups
    both = concat_rollouts([r.select([4, 5, 6, 7]), r.select([0, 1, 2, 3])], tok.pad_token_id)
    assert both.group_size == 4 and both.prompts == ["33+44="] * 4 + ["1+2="] * 4
