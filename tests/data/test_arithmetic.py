"""ArithmeticTask's splits: training, validation and test problems are disjoint."""

import pytest

from rlpost.data import ArithmeticTask


def pairs(ds):
    return {p for p in ds["prompt"]}


def test_the_test_split_is_disjoint_from_training_and_validation():
    task = ArithmeticTask(num_prompts=300, num_val_prompts=50, max_operand=29, num_test_prompts=40)  # 900 problems
    task.setup()
    train, val, test = pairs(task.train_dataset), pairs(task.val_dataset), pairs(task.test_dataset)
    assert (len(train), len(val), len(test)) == (300, 50, 40)
    assert not (train & val) and not (train & test) and not (val & test)
    # adding a test split changes neither the training nor the validation problems
    plain = ArithmeticTask(num_prompts=300, num_val_prompts=50, max_operand=29, num_test_prompts=0)
    plain.setup()
    assert pairs(plain.train_dataset) == train and pairs(plain.val_dataset) == val and plain.test_dataset is None


def test_the_default_test_split_is_256_or_what_the_range_leaves():
    assert len(ArithmeticTask(num_prompts=100, num_val_prompts=20, max_operand=29).test_pairs) == 256
    assert len(ArithmeticTask(num_prompts=60, num_val_prompts=20, max_operand=9).test_pairs) == 20  # 100 - 80
    with pytest.raises(ValueError, match="num_test_prompts=30: the operand range has 20 problems left"):
        ArithmeticTask(num_prompts=60, num_val_prompts=20, max_operand=9, num_test_prompts=30)
    with pytest.raises(ValueError, match="ArithmeticTask has no test split: set data.init_args.num_test_prompts"):
        ArithmeticTask(num_prompts=80, num_val_prompts=20, max_operand=9).held_out_dataset("test")
