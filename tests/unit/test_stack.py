from __future__ import annotations

from pathlib import Path

import pytest

from vllm_wheels.errors import ConfigError
from vllm_wheels.stack import load_stack

GOOD = """
schema_version = 1
name = "t"
python = "3.11"
cuda_arch_list = "9.0 12.0"
[torch]
version = "2.9.0"
cuda = "12.8"
[cuda_toolkit]
version = ">=12.8,<13"
[packages.vllm]
source = { pypi = "0.11.2", sha256 = "%s" }
""" % ("a" * 64)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stack.toml"
    path.write_text(text)
    return path


def test_default_stack_targets_rtx5090(repo_root: Path) -> None:
    stack = load_stack(repo_root / "build" / "stack.toml")
    assert stack.cuda_arch_list == ("12.0",)
    assert stack.torch.version == "2.9.0" and stack.torch.cuda == "12.8"
    vllm, fi = stack.package("vllm"), stack.package("flashinfer-python")
    assert vllm is not None and vllm.source.version == "0.11.2"
    assert fi is not None and fi.source.version == "0.5.2"
    assert stack.local_label() == "cu128.torch290.sm120"
    assert [p.name for p in stack.packages] == ["flashinfer-python", "vllm"]


def test_every_shipped_stack_loads(repo_root: Path) -> None:
    for path in sorted((repo_root / "build" / "stacks").glob("*.toml")):
        assert load_stack(path).name


def test_label_joins_archs(tmp_path: Path) -> None:
    assert load_stack(write(tmp_path, GOOD)).local_label() == "cu128.torch290.sm90.sm120"


@pytest.mark.parametrize(("text", "message", "fix"), [
    (GOOD.replace('python = "3.11"', 'pyton = "3.11"'), "missing key 'python'", None),
    ('pyton = "3.11"\n' + GOOD, "unknown key 'pyton'", "did you mean 'python'"),
    (GOOD.replace('cuda = "12.8"', 'cuda = "12.8"\nindx = "x"'), "unknown key 'indx' in [torch]",
     "did you mean 'index'"),
    (GOOD.replace(', sha256 = "' + "a" * 64 + '"', ""), "needs its sha256", None),
    (GOOD.replace('"9.0 12.0"', '"sm_120"'), "not a TORCH_CUDA_ARCH_LIST", None),
    (GOOD.replace('"2.9.0"\ncuda', '"2.7.1"\ncuda'), "older than 2.8", None),
    (GOOD + "[packages.vllm.options]\ncompile_onyl = []\n", "unknown key 'compile_onyl'",
     "did you mean 'compile_only'"),
    (GOOD.replace('version = ">=12.8,<13"', 'version = "12.8+"'), "not a version specifier",
     None),
])
def test_bad_stacks_are_rejected(tmp_path: Path, text: str, message: str, fix: str | None
                                 ) -> None:
    with pytest.raises(ConfigError) as info:
        load_stack(write(tmp_path, text))
    assert message in info.value.what
    assert info.value.exit_code == 2
    if fix:
        assert fix in info.value.fix


def test_digest_ignores_comments_but_not_pins(tmp_path: Path) -> None:
    a = load_stack(write(tmp_path, GOOD))
    b = load_stack(write(tmp_path, "# comment\n" + GOOD))
    c = load_stack(write(tmp_path, GOOD.replace("2.9.0", "2.9.1")))
    assert a.digest() == b.digest() != c.digest()
