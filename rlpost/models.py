"""Policy, reference and tokenizer construction.

``name_or_path`` is anything ``transformers`` can load (a Hub name for users with a
network, or a local directory), or one of the built-ins that need no download:

- ``builtin:tiny``       a randomly initialised ~1M-parameter Llama with the character tokenizer
                         (digits, ``+-*=()``, space and 3 special tokens: 20; 64 positions): arithmetic only;
- ``builtin:tiny-text``  a randomly initialised ~1M-parameter Llama with a byte-level tokenizer (every
                         text encodes, nothing is unknown) with a ChatML chat template, and 2048
                         positions: text tasks such as GSM8K-format data, offline, end to end;
- ``builtin:arith-sft``  the warm-started arithmetic model shipped in ``rlpost/assets`` (see README;
                         the character tokenizer, 64 positions).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PretrainedConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast)

ASSETS = Path(__file__).parent / "assets"
BUILTIN_PATHS = {"builtin:arith-sft": ASSETS / "arith-sft"}

CHAR_VOCAB = list("0123456789+-*=() ")
# ChatML, as Qwen's instruct models use it: a user message becomes "<|im_start|>user\n...<|im_end|>\n"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer built in code: digits, + - * = ( ) and space.

    Special tokens: ``<pad>`` (0), ``<eos>`` (1), ``<unk>`` (2). Decoding concatenates
    characters, so ``decode(encode(s)) == s``. It saves and loads like any HF tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in CHAR_VOCAB:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built in code: one token per byte of the UTF-8 text (256), so every text
    encodes and ``decode(encode(s)) == s``; special tokens ``<pad>`` (0), ``<|im_start|>`` (1) and
    ``<|im_end|>`` (2, the end of a turn and the EOS); a ChatML chat template (:data:`CHAT_TEMPLATE`)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per byte
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   padding_side="left", chat_template=CHAT_TEMPLATE,
                                   additional_special_tokens=["<|im_start|>"])


# name -> (tokenizer builder, positions): the built-ins made from a config, randomly initialised
BUILTIN_CONFIGS = {"builtin:tiny": (build_char_tokenizer, 64), "builtin:tiny-text": (build_byte_tokenizer, 2048)}


def builtin_config(name: str, **overrides) -> LlamaConfig:
    """The config of a built-in made from a config (:data:`BUILTIN_CONFIGS`)."""
    build, positions = BUILTIN_CONFIGS[name]
    tok = build()
    return tiny_config(len(tok), max_position_embeddings=positions, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, **overrides)


def tiny_config(vocab_size: int, **overrides) -> LlamaConfig:
    """A ~1M-parameter Llama: 4 layers, width 128, 4 heads, 64 positions."""
    cfg = dict(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=True,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Tokenizer for ``name_or_path``; left padding (generation) and a pad token are ensured."""
    if name_or_path in BUILTIN_CONFIGS:
        tok = BUILTIN_CONFIGS[name_or_path][0]()
    else:
        tok = AutoTokenizer.from_pretrained(_resolve(name_or_path))
    tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def load_policy(name_or_path: str, dtype: torch.dtype | str | None = None, seed: int = 0) -> nn.Module:
    """Causal LM for ``name_or_path`` (built-in config, built-in asset, Hub name or local path)."""
    if name_or_path in BUILTIN_CONFIGS:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = LlamaForCausalLM(builtin_config(name_or_path))
        return model if dtype is None else model.to(_dtype(dtype))
    kwargs = {} if dtype is None else {"dtype": _dtype(dtype)}
    return AutoModelForCausalLM.from_pretrained(_resolve(name_or_path), **kwargs)


def load_config(name_or_path: str) -> PretrainedConfig:
    """The model's config alone (no weights): its context length, sizes and dtype, before any model is built."""
    if name_or_path in BUILTIN_CONFIGS:
        return builtin_config(name_or_path)
    return AutoConfig.from_pretrained(_resolve(name_or_path))


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode deep copy (the reference policy)."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def context_length(model_or_config: nn.Module | PretrainedConfig) -> int | None:
    """Positions the model can attend over (``max_position_embeddings`` / ``n_positions``), or None."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def _resolve(name_or_path: str) -> str:
    if name_or_path.startswith("builtin:"):
        if name_or_path not in BUILTIN_PATHS:
            raise ValueError(
                f"unknown built-in model {name_or_path!r}; choose from {sorted([*BUILTIN_PATHS, *BUILTIN_CONFIGS])}"
            )
        path = BUILTIN_PATHS[name_or_path]
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{name_or_path!r} is missing at {path}; rebuild it with `rlpost fit --config configs/sft_arith.yaml`"
            )
        return str(path)
    if looks_local(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(f"model_name_or_path {name_or_path!r} looks like a local path, but "
                                f"{Path(name_or_path).expanduser().absolute()} does not exist (nothing was looked up "
                                "on the Hugging Face Hub; a Hub name is 'org/name')")
    return name_or_path


def looks_local(name_or_path: str) -> bool:
    """A local path rather than a Hub id: absolute, ``~``/``.``-relative, more than one ``/`` (Hub ids are
    ``name`` or ``org/name``), or an existing directory's child (``models/x`` when ``models/`` exists)."""
    p = Path(name_or_path)
    return (name_or_path.startswith(("/", "~", "./", "../", ".\\", "..\\")) or p.is_absolute()
            or name_or_path.count("/") > 1 or "\\" in name_or_path or (len(p.parts) > 1 and Path(p.parts[0]).is_dir()))


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype
