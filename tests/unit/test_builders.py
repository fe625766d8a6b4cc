"""The builder registry: every builder answers the whole Builder protocol, owns a frozen
options dataclass with its defaults, and refuses an option it does not know."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vllm_wheels.build import builders
from vllm_wheels.build.builders import flashinfer, setuptools, vllm
from vllm_wheels.build.pins import exact_pins
from vllm_wheels.build.stack import ExternalOverride, PackageSpec, Source
from vllm_wheels.errors import ConfigError

MEMBERS = ("parse", "build_requirements", "runtime_requirements", "discover_externals",
           "steps", "makes_wheel", "plan_notes", "wheel_extras", "manifest_cmake_args")


def _spec(builder: str, **options: object) -> PackageSpec:
    return PackageSpec(name=f"pkg-{builder}", builder=builder,
                       source=Source(kind="path", path="x", version="1.0"),
                       patches="patches/x", options=options)


@pytest.mark.parametrize("name", sorted(builders.BUILDERS))
def test_every_builder_answers_the_protocol(name: str) -> None:
    module = builders.BUILDERS[name]
    assert name == module.NAME
    for member in MEMBERS:
        assert callable(getattr(module, member)), f"{name}.{member}"
    options = module.parse({}, f"packages.pkg-{name}.options")
    assert dataclasses.is_dataclass(options)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.__setattr__("x", 1)


def test_defaults_live_in_the_options_dataclasses() -> None:
    assert flashinfer.options_of(_spec("flashinfer")) == flashinfer.Options(
        aot=True, aot_modules=("*",), aot_arch_list="")
    assert vllm.options_of(_spec("vllm")) == vllm.Options(compile_only=(), cmake_args=())
    assert vllm.options_of(_spec("vllm", compile_only=["csrc/a.cu"])).compile_only == (
        "csrc/a.cu",)
    assert builders.makes_wheel(_spec("vllm")) is True
    assert builders.makes_wheel(_spec("vllm", compile_only=["csrc/a.cu"])) is False
    assert builders.makes_wheel(_spec("flashinfer", aot=False)) is True


def test_an_unknown_option_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        flashinfer.parse({"aot_module": ["*"]}, "packages.flashinfer-python.options")
    text = info.value.render()
    assert info.value.exit_code == 2
    assert "unknown option 'aot_module'" in text and "did you mean 'aot_modules'?" in text
    with pytest.raises(ConfigError) as info:
        setuptools.parse({"aot": True}, "packages.x.options")
    assert "this builder takes no options" in info.value.render()
    with pytest.raises(ConfigError, match="compile_only must be a list of strings"):
        vllm.parse({"compile_only": "csrc/a.cu"}, "packages.vllm.options")
    with pytest.raises(ConfigError, match="aot must be bool"):
        flashinfer.parse({"aot": "yes"}, "packages.flashinfer-python.options")


def test_only_a_builder_that_downloads_reads_externals(tmp_path: Path) -> None:
    (tmp_path / "CMakeLists.txt").write_text("project(x)\n")
    assert setuptools.discover_externals(tmp_path) is None
    assert flashinfer.discover_externals(tmp_path) is None
    assert vllm.discover_externals(tmp_path) == []
    # A package of a builder without externals keeps its (ignored) overrides table.
    spec = dataclasses.replace(_spec("setuptools"),
                               externals={"cutlass": ExternalOverride(path="x")})
    assert builders.builder_for(spec) is setuptools


def test_build_requirements_come_from_the_builder(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("numpy\ntorch==2.9.0\n")
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "build.txt").write_text("cmake>=3.26\n")
    assert flashinfer.build_requirements(tmp_path, _spec("flashinfer")) == [
        "numpy", "torch==2.9.0"]  # torch pins are stripped by the caller (prepare.py)
    assert flashinfer.build_requirements(tmp_path, _spec("flashinfer", aot=False)) == []
    assert vllm.build_requirements(tmp_path, _spec("vllm")) == ["cmake>=3.26"]
    assert setuptools.build_requirements(tmp_path, _spec("setuptools")) == []


def test_runtime_pins_are_read_where_each_source_declares_its_dependencies(
        tmp_path: Path) -> None:
    """What a built wheel will require, read before it is built: vLLM's setup.py turns
    requirements/cuda.txt (and its -r common.txt) into Requires-Dist, FlashInfer's
    pyproject takes its dependencies from requirements.txt (setuptools' dynamic file), a
    plain package lists them in [project]. Only the exact pins constrain the build venv."""
    from vllm_wheels.build.prepare import runtime_requirements

    vllm_tree = tmp_path / "vllm"
    (vllm_tree / "requirements").mkdir(parents=True)
    (vllm_tree / "requirements" / "common.txt").write_text(
        "lark == 1.2.2\nregex # any\n")
    (vllm_tree / "requirements" / "cuda.txt").write_text(
        "-r common.txt\nnumba == 0.65.0 # Required for N-gram speculative decoding\n"
        "# removed by vllm-wheels (torch comes from the stack): torch==2.11.0\n"
        "apache-tvm-ffi==0.1.9\nnvidia-cudnn-frontend>=1.13.0,<1.19.0\n")
    (vllm_tree / "pyproject.toml").write_text(
        '[project]\nname = "vllm"\ndynamic = ["version", "dependencies"]\n')
    declared = runtime_requirements(vllm_tree, _spec("vllm"))
    assert declared == ["lark == 1.2.2", "regex", "numba == 0.65.0", "apache-tvm-ffi==0.1.9",
                        "nvidia-cudnn-frontend>=1.13.0,<1.19.0"]
    assert exact_pins(declared) == ["lark == 1.2.2", "numba == 0.65.0", "apache-tvm-ffi==0.1.9"]

    flashinfer_tree = tmp_path / "flashinfer"
    flashinfer_tree.mkdir()
    (flashinfer_tree / "requirements.txt").write_text(
        "apache-tvm-ffi>=0.1.6,!=0.1.8,!=0.1.8.post0,<0.2\nclick\n")
    (flashinfer_tree / "pyproject.toml").write_text(
        '[project]\nname = "flashinfer-python"\ndynamic = ["dependencies", "version"]\n'
        '[tool.setuptools.dynamic]\ndependencies = { file = ["requirements.txt"] }\n')
    assert runtime_requirements(flashinfer_tree, _spec("flashinfer")) == [
        "apache-tvm-ffi>=0.1.6,!=0.1.8,!=0.1.8.post0,<0.2", "click"]

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "pyproject.toml").write_text(
        '[project]\nname = "plain"\ndependencies = ["six==1.17.0", "idna>=3"]\n')
    assert runtime_requirements(plain, _spec("setuptools")) == ["six==1.17.0", "idna>=3"]


def test_plan_notes_say_when_no_wheel_is_made() -> None:
    assert vllm.plan_notes(_spec("vllm", compile_only=["csrc/a.cu"])) == [
        "(compile_only: configure + listed translation units, no wheel)"]
    assert vllm.plan_notes(_spec("vllm")) == []


def test_the_stack_reader_fills_in_the_builders_own_defaults(tmp_path: Path) -> None:
    """The stack's options as read (defaults filled in) are the builder's option
    defaults, and a package without `builder =` gets the registry's default builder."""
    from tiny_stacks import stack_toml

    from vllm_wheels.build.stack import load_stack

    sha = "a" * 64
    path = tmp_path / "s.toml"
    path.write_text(stack_toml("s", f"""
[packages.flashinfer-python]
source = {{ pypi = "0.5.2", sha256 = "{sha}" }}
[packages.vllm]
source = {{ pypi = "0.11.2", sha256 = "{sha}" }}
[packages.other]
source = {{ path = "x", version = "1.0" }}
"""))
    stack = load_stack(path)
    for spec in stack.packages:
        assert spec.builder == builders.default_builder(spec.name)
        # The reader fills in what the builder's own parse gives for an empty table.
        parsed = dataclasses.asdict(builders.BUILDERS[spec.builder].parse({}, "defaults"))
        assert dict(spec.options) == {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in parsed.items()}
    assert [p.builder for p in stack.packages] == ["flashinfer", "vllm", "setuptools"]


def test_the_registry_is_every_module_of_the_package() -> None:
    """A builder is one module: the registry, the default builders and the stack schema's
    allowed names come from the modules of build/builders/, nothing is listed by hand."""
    from vllm_wheels.build import stack

    folder = Path(builders.__file__).parent
    modules = sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "base"))
    assert [builders.BUILDERS[n].__name__.rsplit(".", 1)[1] for n in builders.BUILDERS] == modules
    assert stack.builder_names() == tuple(builders.BUILDERS)
    assert builders.DEFAULT_BUILDERS == {"vllm": "vllm", "flashinfer-python": "flashinfer"}
    assert builders.default_builder("FlashInfer_Python") == "flashinfer"
    assert builders.default_builder("tiny-cuda-ext") == "setuptools"
