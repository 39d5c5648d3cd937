"""Conversational tasks end to end: with ``use_chat_template`` the scorers get prompts as message lists and
completions as ``[{"role": "assistant", "content": ...}]``, plus ``completion_ids`` and ``trainer_state``,
exactly as TRL's GRPOTrainer passes them; TRL's shipped reward functions run unchanged in a fit; the
held-out evaluator passes the same forms."""

import json

import pytest

from rlpost.algorithms import GRPO
from rlpost.data import DatasetTask
from tests.conftest import make_trainer
from tests.real_model import GSM8K_ROWS, build_chat_tokenizer, save_tiny_qwen

SYSTEM = "Think in <think></think>, then answer."
MAX_LEN = 16


def test_trl_reward_functions_run_unchanged_in_a_conversational_fit(tmp_path):
    pytest.importorskip("math_verify", reason="trl.rewards.accuracy_reward needs math-verify")
    from trl.rewards import accuracy_reward, get_soft_overlong_punishment, think_format_reward

    model_dir = save_tiny_qwen(tmp_path / "qwen")
    rows = [dict(r, solution="$" + r["answer"].rsplit("#### ", 1)[1] + "$") for r in GSM8K_ROWS]
    files = {}
    for split, part in (("train", rows), ("test", rows[:2])):
        files[split] = str(tmp_path / f"{split}.jsonl")
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    calls = []

    def recorder(prompts, completions, completion_ids, trainer_state, **columns):
        calls.append(dict(prompts=prompts, completions=completions, completion_ids=completion_ids,
                          step=trainer_state.global_step, max_steps=trainer_state.max_steps, columns=columns))
        return [0.0] * len(completions)

    overlong = get_soft_overlong_punishment(max_completion_len=MAX_LEN, soft_punish_cache=4)
    task = DatasetTask(data_files=files, prompt_column="question", use_chat_template=True, system_prompt=SYSTEM,
                       prompts_per_step=2, eval_batch_size=2,
                       scorers={"think": think_format_reward, "overlong": overlong, "accuracy": accuracy_reward,
                                "recorder": recorder})
    model = GRPO(model_name_or_path=str(model_dir), num_generations=4, max_completion_length=MAX_LEN, beta=0.0,
                 save_policy=False)
    make_trainer(tmp_path, max_steps=2, log_every_n_steps=1).fit(model, datamodule=task)

    eos = build_chat_tokenizer().eos_token_id
    questions = {r["question"] for r in rows}
    train = [c for c in calls if len(c["prompts"]) == 2 * 4]
    assert [c["step"] for c in train] == [0, 1] and {c["max_steps"] for c in calls} == {2}
    for c in calls:
        for prompt, completion, ids in zip(c["prompts"], c["completions"], c["completion_ids"]):
            assert prompt[0] == {"role": "system", "content": SYSTEM} and prompt[1]["role"] == "user"
            assert prompt[1]["content"] in questions and len(prompt) == 2
            assert isinstance(completion, list) and len(completion) == 1 and completion[0]["role"] == "assistant"
            assert completion[0]["content"] == model.tokenizer.decode(ids, skip_special_tokens=True)
            assert all(isinstance(i, int) for i in ids)
            assert ids[-1] == eos or len(ids) == MAX_LEN  # unpadded, up to and including EOS (TRL's)
            assert eos not in ids[:-1]
        assert set(c["columns"]) == {"answer", "solution"}
    # the evaluator passes the same forms: before (step 0) and after (step 2) training
    held_out = [c for c in calls if len(c["prompts"]) == 2]
    assert [c["step"] for c in held_out] == [0, 2]
    # the shipped functions ran on those arguments: the overlong punishment, recomputed from the ids
    for c, row in zip(train, model.history):
        expected = overlong(c["completion_ids"])
        assert row["train/rewards/overlong/mean"] == pytest.approx(sum(expected) / len(expected), abs=1e-6)
        assert 0.0 <= row["train/rewards/think/mean"] <= 1.0 and "train/rewards/accuracy/mean" in row
