"""Writes config.json and a tokenizer of a tiny Llama (hidden 256, 2 layers, 4 heads of 64)
into a directory, made offline: vLLM serves it with --load-format dummy (random weights),
so no weights are written. The tokenizer is a byte-level BPE trained on the spot with a
fixed seed (same bytes every run). Run with a Python that has transformers and tokenizers:

    python verify/gpu/make_tiny_llama.py OUT_DIR
"""

import json
import random
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(0)
    words = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 7)))
             for _ in range(2000)]
    corpus = [" ".join(rnd.choice(words) for _ in range(20)) for _ in range(3000)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    # A chat template, so /v1/chat/completions works as well as /v1/completions.
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                          "{% endfor %}assistant:")
    fast.save_pretrained(out)
    config = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         head_dim=64, max_position_embeddings=4096, bos_token_id=1,
                         eos_token_id=2, torch_dtype="bfloat16")
    config.save_pretrained(out)
    print(json.dumps({"model_dir": str(out), "files": sorted(p.name for p in out.iterdir())}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
