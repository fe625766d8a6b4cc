"""Writes config.json and a tokenizer for a named model shape into a directory, made
offline: vLLM serves it with --load-format dummy (random weights), so no weights are
written. The tokenizer is a byte-level BPE trained on the spot from a seeded corpus, padded
with reserved special tokens to the config's vocabulary size (as Llama 3 pads its 128,000
BPE tokens with 256 reserved ones), so every id the random model samples decodes. Same
bytes every run. Needs only `tokenizers` (vLLM's venvs and the throughput extra have it):

    python verify/gpu/make_model.py SHAPE OUT_DIR      (SHAPE: see SHAPES; --list)

Shapes (all bf16; the throughput workloads in verify/workloads/ name them):
    llama-8b        Llama 3 8B's shape: hidden 4096, 32 layers, 32 heads / 8 KV heads,
                    intermediate 14336, vocab 128256, max_position 8192 (8.03 B params)
    mixtral-small   Mixtral-style MoE (vLLM's MixtralForCausalLM: fused_moe on `_moe_C`'s
                    topk_softmax / moe_align_block_size): 8 experts, top-2, hidden 2048,
                    16 layers, 16 heads / 8 KV heads (head 128), expert intermediate 5632,
                    vocab 32000 (5.67 B params, 1.56 B active per token): half Mixtral
                    8x7B's width and layers, so it fits beside another server on one GPU
    tiny-llama      the old tiny test Llama (hidden 256, 2 layers; make_tiny_llama.py)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"

SHAPES: dict[str, dict[str, Any]] = {
    "llama-8b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 128256, "max_position_embeddings": 8192, "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False,
    },
    "mixtral-small": {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "num_local_experts": 8, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02,
        "vocab_size": 32000, "max_position_embeddings": 8192, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
        "sliding_window": None,
    },
    "tiny-llama": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 64,
        "vocab_size": 4096, "max_position_embeddings": 4096, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
    },
}
# The trained BPE part, with BOS and EOS (the rest of the vocabulary are reserved special
# tokens, 256 for llama-8b as in Llama 3): 150,000 seeded random words give 128,000 merges
# in about 15 s.
BPE_SIZE = {"llama-8b": 128000, "mixtral-small": 32000, "tiny-llama": 4096}


def config(shape: str) -> dict[str, Any]:
    return {**SHAPES[shape], "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16",
            "initializer_range": 0.02, "use_cache": True}


def tokenizer(vocab_size: int, bpe_size: int) -> Tokenizer:
    rnd = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rnd.choice(letters) for _ in range(rnd.randint(3, 10)))
             for _ in range(150000)]
    corpus = [" ".join(rnd.choice(words) for _ in range(30)) for _ in range(40000)]
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=bpe_size, special_tokens=[BOS, EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    reserved = vocab_size - tok.get_vocab_size()
    if reserved < 0:
        raise SystemExit(f"the BPE has {tok.get_vocab_size()} tokens, more than {vocab_size}")
    tok.add_special_tokens([f"<|reserved_special_token_{i}|>" for i in range(reserved)])
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    return tok


def main(shape: str, out: Path) -> None:
    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    cfg = config(shape)
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(cfg["vocab_size"], BPE_SIZE[shape])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
        "model_max_length": cfg["max_position_embeddings"], "clean_up_tokenization_spaces": False,
        # A chat template, so /v1/chat/completions works as well as /v1/completions.
        "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                         "{% endfor %}assistant:",
    }, indent=2, sort_keys=True) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS}, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    print(json.dumps({"shape": shape, "model_dir": str(out),
                      "files": sorted(p.name for p in out.iterdir())}))


if __name__ == "__main__":
    if sys.argv[1:] == ["--list"]:
        print("\n".join(SHAPES))
    elif len(sys.argv) != 3:
        raise SystemExit(__doc__)
    else:
        main(sys.argv[1], Path(sys.argv[2]))
