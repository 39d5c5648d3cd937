"""Local stand-ins for a real model and dataset, built in code (no download): a randomly initialised
Qwen2-architecture causal LM, a byte-level tokenizer carrying a Qwen-style chat template, and
GSM8K-format rows. The recipe tests (``configs/*_qwen_gsm8k.yaml``) swap these in for
``Qwen/Qwen2.5-0.5B-Instruct`` and ``openai/gsm8k``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Qwen2.5-Instruct's template, reduced to what the recipe uses (system, user, assistant turns)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
    {"question": "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she "
                 "needs. How much more money does Betty need to buy the wallet?",
     "answer": "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\n#### 50"},
    {"question": "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write "
                 "a year?",
     "answer": "He writes each friend 3*2=<<3*2=6>>6 pages a week\nSo he writes 6*2=<<6*2=12>>12 pages every "
               "week\nThat means he writes 12*52=<<12*52=624>>624 pages a year\n#### 624"},
]


def build_chat_tokenizer():
    """A byte-level tokenizer (every UTF-8 text round-trips) with Qwen's special tokens and chat template;
    ``<|im_end|>`` is EOS, ``<|endoftext|>`` padding, as in Qwen2.5-Instruct."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"], padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_qwen(path: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer Qwen2 (about 0.1M parameters) and the chat tokenizer, saved
    with ``save_pretrained``: a local stand-in for ``Qwen/Qwen2.5-0.5B-Instruct``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_chat_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_gsm8k(directory: Path) -> dict[str, str]:
    """GSM8K-format rows (``question``, ``answer`` ending in ``#### N``) as local train/test jsonl."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in (("train", GSM8K_ROWS * 2), ("test", GSM8K_ROWS[:2])):  # 8 training rows: one step's B
        path = directory / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[split] = str(path)
    return files
