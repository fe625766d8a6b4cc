"""The smallest model directory the throughput harness accepts: an empty config.json and a
real word-level tokenizer (w0 ... w63, [UNK]), for tests that count tokens against stand-in
servers."""

from __future__ import annotations

from pathlib import Path


def word_level_model(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    path.mkdir()
    (path / "config.json").write_text("{}")
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)} | {"[UNK]": 64},
                                           unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path / "tokenizer.json"))
    return path
