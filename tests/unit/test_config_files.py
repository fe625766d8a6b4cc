"""The config files other than the stack (config.Table): a missing key names the file's
own kind and docs, never the stack reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_wheels.errors import ConfigError
from vllm_wheels.verify.throughput.workload import load_workload


def test_a_workload_missing_a_key_names_the_workload_and_its_docs(repo_root: Path,
                                                                  tmp_path: Path) -> None:
    text = (repo_root / "verify" / "workloads" / "single-stream.toml").read_text()
    bad = tmp_path / "my-load.toml"
    bad.write_text("\n".join(line for line in text.splitlines()
                             if not line.startswith("model")) + "\n")
    with pytest.raises(ConfigError) as info:
        load_workload(bad)
    error = info.value
    assert error.exit_code == 2
    assert f"{bad}: missing key 'model' in the top level of the workload 'single-stream'" \
        in error.what
    assert "docs/throughput.md" in error.fix and "stack-reference" not in error.render()
    assert "the build cannot be pinned" not in error.render()
    # In a sub-table too.
    bad.write_text(text.replace("input_len", "input_length"))
    with pytest.raises(ConfigError) as info:
        load_workload(bad)
    assert "workload 'single-stream'" in info.value.what or "input_len" in info.value.fix
    assert "stack-reference" not in info.value.render()
