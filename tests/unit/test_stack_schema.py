"""The stack schema (vllm_wheels.build.stack) is the one source of the reader, the trial's
writer and docs/stack-reference.md: what it writes reads back as the same stack, every key
is documented, and the committed reference is the generated one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vllm_wheels.build import stack as schema
from vllm_wheels.build.stack import load_stack, render_toml

# Every key off its default, every source kind, sub-tables and quoted names.
FULL = """
schema_version = 1
name = "full"
description = "every key"
python = "3.12"
cuda_arch_list = "9.0a 12.0+PTX"
label = "custom.label"

[torch]
version = "2.9.0"
cuda = "12.8"
index = "https://download.pytorch.org/whl/cu128"
sha256 = "{sha}"
companions = { torchvision = "0.24.0" }

[cuda_toolkit]
version = ">=13.0,<14"
source = "pip"
pip_version = "13.0.3.0"

[build]
build_type = "RelWithDebInfo"
max_jobs = 3
nvcc_threads = 2
gb_per_job = 4.5
compile_cache = "sccache"
compile_cache_remote = "redis://cache.example:6379"

[docker]
versions = "docker/other.toml"
distro = "ubuntu24.04"

[packages."odd.name"]
builder = "setuptools"
source = { path = "pkgs/x.tar.gz", sha256 = "{sha}", version = "1.0" }
patches = "patches/elsewhere"
env = { FOO = "1" }

[packages.flashinfer-python]
source = { pypi = "0.5.2", sha256 = "{sha}", index = "https://mirror.example/simple" }
options = { aot = false, aot_arch_list = "12.0f" }

[packages.vllm]
source = { git = "https://github.com/vllm-project/vllm", commit = "abcdef1", version = "0.11.2" }
options = { compile_only = ["csrc/a.cu"], cmake_args = ["-DX=1"] }
[packages.vllm.externals.cutlass]
from_source = "flashinfer-python:3rdparty/cutlass"
[packages.vllm.externals.flashmla]
path = "/srv/flashmla"
[packages.vllm.externals.qutlass]
url = "https://example/qutlass.git"
commit = "1234567"
""".replace("{sha}", "b" * 64)


def test_writer_round_trips_every_key(tmp_path: Path) -> None:
    source = tmp_path / "full.toml"
    source.write_text(FULL)
    stack = load_stack(source)
    written = tmp_path / "written.toml"
    written.write_text(render_toml(stack, header=["a header"], notes={"vllm": ["a note"]}))
    again = load_stack(written)
    assert dataclasses.replace(again, path=stack.path) == stack
    assert again.digest() == stack.digest()
    # Keys holding their default are left out, the ones marked `always` are not.
    text = written.read_text()
    assert "# a header\nschema_version = 1\n" in text
    assert "\n# a note\n[packages.vllm]\n" in text
    assert 'compile_cache_remote = "redis://cache.example:6379"' in text
    assert "aot_modules" not in text


@pytest.mark.parametrize("name", ["build/stack.toml", "build/stacks/ci-cuda13.toml",
                                  "build/stacks/h200-cu130-verify.toml",
                                  "build/stacks/rtx5090-cu128.toml"])
def test_writer_round_trips_shipped_stacks(repo_root: Path, tmp_path: Path, name: str) -> None:
    stack = load_stack(repo_root / name)
    target = tmp_path / "s.toml"
    target.write_text(render_toml(stack))
    assert dataclasses.replace(load_stack(target), path=stack.path) == stack


def test_digest_keys_are_the_files_keys(repo_root: Path) -> None:
    # Renaming an attribute must not move every stack's digest (and so every wheel's
    # rebuild decision): the digest hashes the TOML keys.
    data = load_stack(repo_root / "build" / "stack.toml").to_dict()
    assert data["torch"]["index"] == "https://pypi.org/simple"
    assert data["packages"][0]["source"]["index"] == "https://pypi.org/simple"


def test_every_key_is_documented() -> None:
    for cls in (schema.Stack, schema.TorchPin, schema.CudaToolkit, schema.BuildSettings,
                schema.DockerSettings, schema.PackageSpec, schema.Source,
                schema.ExternalOverride):
        assert cls.__doc__, cls
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc text"
    from vllm_wheels.build import builders

    # The schema's vocabulary of builders is the builder registry's.
    assert schema.builder_names() == tuple(builders.BUILDERS)
    assert set(schema.builder_names()) == {"flashinfer", "setuptools", "vllm"}
    for builder in schema.builder_names():
        for key, option in schema.builder_options(builder).items():
            assert option.doc, f"{builder} option {key} has no doc text"
    assert set(schema.builder_options("flashinfer")) == {"aot", "aot_modules", "aot_arch_list"}


def test_defaults_live_in_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(FULL.split("[torch]")[0].replace('label = "custom.label"\n', "")
                    + '[torch]\nversion = "2.9.0"\ncuda = "12.8"\n'
                    + '[cuda_toolkit]\nversion = ">=12.8,<13"\n'
                    + '[packages.vllm]\nsource = { pypi = "0.11.2", sha256 = "' + "a" * 64
                    + '" }\n')
    stack = load_stack(path)
    assert stack.build == schema.BuildSettings()
    assert stack.docker == schema.DockerSettings()
    assert stack.label is None
    vllm = stack.packages[0]
    assert vllm.builder == "vllm" and vllm.patches == "patches/vllm/0.11.2"
    assert dict(vllm.options) == {k: o.default for k, o in schema.builder_options("vllm").items()}
    assert vllm.source.simple_url == schema.PYPI_SIMPLE_URL
