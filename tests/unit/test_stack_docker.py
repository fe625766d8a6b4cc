"""The stack's [docker] table: strict keys, defaults for stacks written before it existed,
and no effect on the build digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_wheels.errors import ConfigError
from vllm_wheels.stack import DockerSettings, load_stack

BASE = """
schema_version = 1
name = "t"
python = "3.12"
cuda_arch_list = "12.0"
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


def test_docker_table_is_optional_with_defaults(tmp_path: Path) -> None:
    assert load_stack(write(tmp_path, BASE)).docker == DockerSettings(
        versions="docker/versions.toml", distro="ubuntu22.04")


def test_docker_table_is_read(tmp_path: Path) -> None:
    stack = load_stack(write(tmp_path, BASE + '[docker]\nversions = "x/v.toml"\n'
                                              'distro = "ubuntu24.04"\n'))
    assert stack.docker == DockerSettings(versions="x/v.toml", distro="ubuntu24.04")


def test_docker_settings_do_not_change_the_build_digest(tmp_path: Path) -> None:
    plain = load_stack(write(tmp_path, BASE)).digest()
    other = load_stack(write(tmp_path, BASE + '[docker]\ndistro = "ubuntu24.04"\n')).digest()
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
        load_stack(write(tmp_path, BASE + extra))
    assert message in info.value.render()


def test_shipped_stacks_name_the_versions_file(repo_root: Path) -> None:
    for path in [repo_root / "build" / "stack.toml",
                 *sorted((repo_root / "build" / "stacks").glob("*.toml"))]:
        stack = load_stack(path)
        assert (repo_root / stack.docker.versions).is_file(), path
