"""Model loading: a local-looking path that does not exist is refused with the path, before any Hub lookup."""

import pytest

from rlpost.algorithms import GRPO
from rlpost.models import looks_local


@pytest.mark.parametrize("name", ["./no/such/model", "../missing-sft", "~/missing-model", "/abs/missing/model",
                                  "runs/version_0/policy"])
def test_a_missing_local_model_path_is_refused_naming_it(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # 'runs/...' is local because runs/ exists here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # were the Hub asked, the error would be a different one
    with pytest.raises(FileNotFoundError, match=rf"model_name_or_path '{name}' looks like a local path, but .* does not "
                                                r"exist \(nothing was looked up on the Hugging Face Hub"):
        GRPO(model_name_or_path=name)


@pytest.mark.parametrize("name, local", [("gpt2", False), ("Qwen/Qwen2.5-0.5B", False), ("./x", True),
                                         ("/x", True), ("a/b/c", True), ("~/x", True)])
def test_what_looks_local(name, local):
    assert looks_local(name) is local
