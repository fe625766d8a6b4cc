from __future__ import annotations

from pathlib import Path

import pytest

from vllm_wheels.build.stack import DockerSettings, load_stack
from vllm_wheels.errors import ConfigError

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
    assert stack.name == "rtx5090" and stack.python == "3.12"
    assert stack.cuda_arch_list == ("12.0",)
    assert stack.torch.version == "2.11.0" and stack.torch.cuda == "13.0"
    vllm, fi = stack.package("vllm"), stack.package("flashinfer-python")
    assert vllm is not None and vllm.source.version == "0.20.0"
    assert fi is not None and fi.source.version == "0.6.8.post1"
    assert stack.local_label() == "cu130.torch2110.sm120"
    assert [p.name for p in stack.packages] == ["flashinfer-python", "vllm"]
    # A fresh box builds it: the whole CUDA 13 toolkit comes from PyPI, of the version
    # torch 2.11.0 itself requires; every external at its pinned ref, CUTLASS included
    # (FlashInfer's vendored copy lacks the example headers the 12.0 MLA kernel includes).
    assert stack.cuda_toolkit.source == "pip" and stack.cuda_toolkit.pip_version == "13.0.2"
    assert stack.cuda_toolkit.specifier.contains("13.0.2") and stack.torch.cuda_major == 13
    assert vllm.externals == {}


def test_cu128_stack_keeps_the_former_default(repo_root: Path) -> None:
    stack = load_stack(repo_root / "build" / "stacks" / "rtx5090-cu128.toml")
    assert stack.name == "rtx5090-cu128" and stack.cuda_arch_list == ("12.0",)
    assert stack.torch.version == "2.9.0" and stack.torch.cuda == "12.8"
    assert stack.cuda_toolkit.source == "system"
    assert stack.cuda_toolkit.specifier.contains("12.8.1")
    assert not stack.cuda_toolkit.specifier.contains("13.0.2")
    vllm, fi = stack.package("vllm"), stack.package("flashinfer-python")
    assert vllm is not None and vllm.source.version == "0.11.2"
    assert fi is not None and fi.source.version == "0.5.2"
    assert stack.local_label() == "cu128.torch290.sm120"


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


@pytest.mark.parametrize(("old", "new", "message", "fix"), [
    # The misspelt key is named, with the rename that fixes it.
    ('cuda_arch_list = "9.0 12.0"', 'cuda_arch_lst = "9.0 12.0"',
     "missing key 'cuda_arch_list' in the top level",
     "did you mean 'cuda_arch_list'? rename 'cuda_arch_lst' to 'cuda_arch_list'"),
    ('version = "2.9.0"', 'verison = "2.9.0"', "missing key 'version' in [torch]",
     "rename 'verison' to 'version'"),
    # Nothing close: say where to add it, never "in []".
    ('cuda_arch_list = "9.0 12.0"', "", "missing key 'cuda_arch_list' in the top level",
     "add cuda_arch_list = ... to the top level"),
])
def test_missing_required_key_suggests_the_misspelt_one(tmp_path: Path, old: str, new: str,
                                                        message: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_stack(write(tmp_path, GOOD.replace(old, new)))
    assert message in info.value.what
    assert "[]" not in info.value.what
    assert fix in info.value.fix
    assert info.value.why


def test_digest_ignores_comments_but_not_pins(tmp_path: Path) -> None:
    a = load_stack(write(tmp_path, GOOD))
    b = load_stack(write(tmp_path, "# comment\n" + GOOD))
    c = load_stack(write(tmp_path, GOOD.replace("2.9.0", "2.9.1")))
    assert a.digest() == b.digest() != c.digest()


# The [docker] table: strict keys, defaults for stacks written before it existed, and no
# effect on the build digest.

def test_docker_table_is_optional_with_defaults(tmp_path: Path) -> None:
    assert load_stack(write(tmp_path, GOOD)).docker == DockerSettings(
        versions="docker/versions.toml", distro="ubuntu22.04")


def test_docker_table_is_read(tmp_path: Path) -> None:
    stack = load_stack(write(tmp_path, GOOD + '[docker]\nversions = "x/v.toml"\n'
                                              'distro = "ubuntu24.04"\n'))
    assert stack.docker == DockerSettings(versions="x/v.toml", distro="ubuntu24.04")


def test_docker_settings_do_not_change_the_build_digest(tmp_path: Path) -> None:
    plain = load_stack(write(tmp_path, GOOD)).digest()
    other = load_stack(write(tmp_path, GOOD + '[docker]\ndistro = "ubuntu24.04"\n')).digest()
    assert plain == other


@pytest.mark.parametrize(("extra", "message"), [
    ('[docker]\nversion = "docker/versions.toml"\n', "did you mean 'versions'"),
    ('[docker]\nversions = "/etc/versions.toml"\n', "inside the repository"),
    ('[docker]\nversions = "../versions.toml"\n', "inside the repository"),
    ('[docker]\ndistro = "jammy"\n', 'like "ubuntu22.04"'),
    ('[docker]\nversions = 3\n', "versions must be str"),
])
def test_bad_docker_table_is_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_stack(write(tmp_path, GOOD + extra))
    assert message in info.value.render()


def test_shipped_stacks_name_the_versions_file(repo_root: Path) -> None:
    for path in [repo_root / "build" / "stack.toml",
                 *sorted((repo_root / "build" / "stacks").glob("*.toml"))]:
        stack = load_stack(path)
        assert (repo_root / stack.docker.versions).is_file(), path
