"""Build arguments, image tags and the exact `docker build` / `docker run` command lines
derived from a stack; the check that docker/ agrees with the stack; and the two image
builds: `build-wheels --in-docker` (wheels exported to wheels/<stack>/) and the runtime
image (our wheels + the exact torch, verified against itself while it builds).

Everything a Dockerfile needs arrives as a --build-arg computed here from the stack and
docker/versions.toml. The Dockerfiles' ARG defaults mirror the default stack, so a plain
`docker build` of them means the same thing; `check_consistency` fails when they drift,
and `update-images` rewrites them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import Version

from .. import layout
from ..build.stack import Stack, load_stack
from ..build.wheelmeta import wheel_info
from ..cache import default_cache_root, remove, temp_sibling, write_atomic
from ..errors import BuildError, ConfigError, SourceError, ToolchainError
from ..log import Reporter, new_log_path
from ..runner import capture, run
from .versions import Versions, build_flavour, choose_cuda_image, load_versions

PLAN_SCHEMA_VERSION = 1
BUILD_DOCKERFILE = "docker/Dockerfile.build"
RUNTIME_DOCKERFILE = "docker/Dockerfile.runtime"
PYPI = "https://pypi.org/simple"
# BuildKit is what gives RUN --mount=type=cache (compile cache, downloads), named build
# contexts and --output; the classic builder has none of them.
BUILDKIT_ENV = {"DOCKER_BUILDKIT": "1"}
SERVE_PORT = 8000


# ----------------------------------------------------------------- derivation


def stack_in_repo(stack: Stack, root: Path) -> str:
    """The stack file's path inside the build context (the repo), as the image sees it."""
    try:
        return stack.path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise ConfigError(f"--in-docker: the stack file {stack.path} is outside the repository "
                          f"{root}", why="the build context is the repository; the image only "
                                         "sees files inside it",
                          fix="copy the stack into build/stacks/ and pass that path") from None


def build_image_args(stack: Stack, versions: Versions, stack_path: str,
                     pipeline_args: Sequence[str] = ()) -> dict[str, str]:
    """--build-arg values of docker/Dockerfile.build for this stack."""
    return {
        "UV_IMAGE": versions.image("uv").reference,
        "BASE_IMAGE": choose_cuda_image(stack, versions, build_flavour(stack)).reference,
        "PYTHON_VERSION": versions.python_for(stack),
        "NOX_VERSION": versions.nox,
        "STACK": stack_path,
        "STACK_NAME": stack.name,
        "LOCAL_LABEL": stack.local_label(),
        "PIPELINE_ARGS": shlex.join(pipeline_args),
    }


def torch_requirements(stack: Stack) -> list[str]:
    """The exact torch (and companions) the wheels were built against."""
    return [f"torch=={stack.torch.version}",
            *(f"{name}=={version}" for name, version in sorted(stack.torch.companions.items()))]


def runtime_image_args(stack: Stack, versions: Versions) -> dict[str, str]:
    """--build-arg values of docker/Dockerfile.runtime for this stack."""
    return {
        "UV_IMAGE": versions.image("uv").reference,
        "BASE_IMAGE": choose_cuda_image(stack, versions, "runtime").reference,
        "PYTHON_VERSION": versions.python_for(stack),
        "TORCH_INDEX": (stack.torch.simple_url or PYPI).rstrip("/"),
        "TORCH_REQUIREMENTS": " ".join(torch_requirements(stack)),
        "STACK_NAME": stack.name,
        "LOCAL_LABEL": stack.local_label(),
    }


def image_tag(kind: str, stack: Stack, repository: str = "vllm-wheels") -> str:
    """e.g. vllm-wheels-runtime:rtx5090-cu128.torch290.sm120 (stack name + local label)."""
    tag = f"{stack.name}-{stack.local_label()}"
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", tag):
        raise ConfigError(f"image tag '{tag}' is not a valid Docker tag",
                          fix="shorten the stack name or label (128 characters, [A-Za-z0-9_.-])")
    return f"{repository}-{kind}:{tag}"


def unresolved_images(versions: Versions, args: Mapping[str, str]) -> list[str]:
    refs = {pin.ref for pin in versions.images.values() if not pin.resolved}
    return sorted(value for value in args.values() if value in refs)


@dataclass(frozen=True)
class DockerCommand:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    tag: str | None = None
    unresolved: tuple[str, ...] = ()

    def shell(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (prefix + " " if prefix else "") + shlex.join(self.argv)

    def to_dict(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "env": dict(self.env), "shell": self.shell(),
                "cwd": str(self.cwd) if self.cwd else None, "build_args": dict(self.build_args),
                "tag": self.tag, "unresolved_digests": list(self.unresolved)}


def docker_build(*, dockerfile: str, build_args: Mapping[str, str], context: str = ".",
                 target: str | None = None, tag: str | None = None, output: Path | None = None,
                 build_contexts: Mapping[str, Path] | None = None, cwd: Path | None = None,
                 unresolved: Sequence[str] = ()) -> DockerCommand:
    argv = ["docker", "build", "--file", dockerfile, "--progress", "plain"]
    if target:
        argv += ["--target", target]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    for name, path in (build_contexts or {}).items():
        argv += ["--build-context", f"{name}={path}"]
    if tag:
        argv += ["--tag", tag]
    if output is not None:
        argv += ["--output", f"type=local,dest={output}"]
    argv.append(context)
    return DockerCommand(tuple(argv), dict(BUILDKIT_ENV), cwd, dict(build_args), tag,
                         tuple(unresolved))


def wheels_build_command(stack: Stack, versions: Versions, root: Path, output: Path,
                         pipeline_args: Sequence[str] = ()) -> DockerCommand:
    """`build-wheels --in-docker`: the `wheels` stage of Dockerfile.build, exported."""
    args = build_image_args(stack, versions, stack_in_repo(stack, root), pipeline_args)
    return docker_build(dockerfile=BUILD_DOCKERFILE, build_args=args, target="wheels",
                        output=output, cwd=root, unresolved=unresolved_images(versions, args))


def runtime_build_command(stack: Stack, versions: Versions, root: Path, wheels: Path,
                          repository: str = "vllm-wheels") -> DockerCommand:
    args = runtime_image_args(stack, versions)
    return docker_build(dockerfile=RUNTIME_DOCKERFILE, build_args=args,
                        build_contexts={"wheels": wheels}, tag=image_tag("runtime", stack,
                                                                          repository),
                        cwd=root, unresolved=unresolved_images(versions, args))


def runtime_run_command(tag: str, model: str = "<MODEL>", *, port: int = SERVE_PORT,
                        hf_cache: str | None = None,
                        extra: Sequence[str] = ()) -> DockerCommand:
    """How to serve with the runtime image: all GPUs, shared memory for NCCL/torch IPC,
    the host's Hugging Face cache mounted so weights download once."""
    if hf_cache is None:
        hf_cache = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    argv = ("docker", "run", "--rm", "--gpus", "all", "--ipc=host",
            "--publish", f"{port}:{SERVE_PORT}",
            "--volume", f"{hf_cache}:/root/.cache/huggingface", tag, model, *extra)
    return DockerCommand(argv, {}, None, {}, tag)


# --------------------------------------------------------- docker/ vs the stack


_ARG_LINE = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(.*?))?\s*$", re.IGNORECASE)


def dockerfile_args(text: str) -> dict[str, str | None]:
    """ARG name -> default (None when every declaration lacks one), in file order. A
    stage re-declares a global ARG without a default to use it; that keeps the default."""
    found: dict[str, str | None] = {}
    for line in text.splitlines():
        match = _ARG_LINE.match(line)
        if not match:
            continue
        name, raw = match.group(1), match.group(2)
        value = None if raw is None else _unquote(raw)
        if value is not None or name not in found:
            found[name] = value
    return found


def _unquote(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    return raw


def expected_defaults(root: Path, stack_path: Path | None = None) -> dict[str, dict[str, str]]:
    """Dockerfile -> the ARG defaults the default stack and its versions file imply."""
    stack = load_stack(stack_path or layout.default_stack(root))
    versions = load_versions(root / stack.docker.versions)
    return {BUILD_DOCKERFILE: build_image_args(stack, versions, stack_in_repo(stack, root)),
            RUNTIME_DOCKERFILE: runtime_image_args(stack, versions)}


def check_consistency(root: Path, stack_path: Path | None = None) -> list[str]:
    """Disagreements between docker/ and the stack (empty list = consistent)."""
    problems = []
    stack_name = (stack_path or layout.default_stack(root))
    for dockerfile, expected in expected_defaults(root, stack_path).items():
        path = root / dockerfile
        if not path.is_file():
            problems.append(f"{dockerfile} is missing")
            continue
        declared = dockerfile_args(path.read_text(encoding="utf-8"))
        for name, value in expected.items():
            if name not in declared:
                problems.append(f"{dockerfile}: no ARG {name}; the pipeline passes "
                                f"--build-arg {name}=... and docker would ignore it")
            elif declared[name] != value:
                problems.append(f"{dockerfile}: ARG {name} defaults to {declared[name]!r}, but "
                                f"{stack_name.name} and its versions file give {value!r}")
        for name in declared:
            if name not in expected:
                problems.append(f"{dockerfile}: ARG {name} is not derived from the stack "
                                "(add it to src/vllm_wheels/images/commands.py or remove it)")
    return problems


def sync_dockerfile(text: str, expected: Mapping[str, str]) -> str:
    """Rewrite the `ARG NAME=default` lines to the expected defaults."""
    out = []
    for line in text.splitlines(keepends=True):
        match = _ARG_LINE.match(line.rstrip("\n"))
        if match and match.group(2) is not None and match.group(1) in expected:
            indent = line[: len(line) - len(line.lstrip())]
            line = f'{indent}ARG {match.group(1)}="{expected[match.group(1)]}"\n'
        out.append(line)
    return "".join(out)


def synced_dockerfiles(root: Path) -> dict[Path, str]:
    """Dockerfiles whose ARG defaults would change, with their new text."""
    changed = {}
    for dockerfile, expected in expected_defaults(root).items():
        path = root / dockerfile
        old = path.read_text(encoding="utf-8")
        new = sync_dockerfile(old, expected)
        if new != old:
            changed[path] = new
    return changed


# ---------------------------------------------------------------- running docker


def require_docker() -> str:
    """The Docker engine's version, or ToolchainError when no engine answers."""
    if shutil.which("docker") is None:
        raise ToolchainError("docker is not installed", fix="install Docker Engine 23+ "
                             "(BuildKit), or build on the host: drop --in-docker")
    try:
        return capture(["docker", "version", "--format", "{{.Server.Version}}"],
                       timeout=30).strip()
    except ToolchainError as exc:
        raise ToolchainError("no Docker engine answers (`docker version` failed)",
                             why=exc.what.splitlines()[-1][:300],
                             fix="start the Docker daemon or set DOCKER_HOST; or build on "
                                 "the host: drop --in-docker") from None


def _announce(reporter: Reporter, command: DockerCommand) -> None:
    reporter.say(f"    {command.shell()}")
    for ref in command.unresolved:
        reporter.warn(f"{ref} is pinned by tag only (digest unresolved): run "
                      "`nox -s update_images` on a machine that reaches the registry")


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    write_atomic(path, json.dumps({"schema_version": PLAN_SCHEMA_VERSION, **data}, indent=2)
                 + "\n")


def _reporter(kind: str, stack: Stack) -> Reporter:
    return Reporter(new_log_path(default_cache_root() / "logs", f"docker-{kind}-{stack.name}"))


def pipeline_args_from(args: argparse.Namespace) -> list[str]:
    """The build-wheels flags that mean the same inside the container."""
    if args.cache_dir is not None or args.build_venv is not None:
        raise ConfigError("--cache-dir and --build-venv do not apply with --in-docker",
                          why="inside the container the pipeline cache is a BuildKit cache "
                              "mount and the build venv lives in it")
    if getattr(args, "compile_cache_remote", None) is not None:
        raise ConfigError("--compile-cache-remote does not apply with --in-docker",
                          why="the build image runs the pipeline from the stack inside "
                              "BuildKit; a flag (or a password) given here would have to "
                              "become a build argument, which the image history keeps",
                          fix="set [build] compile_cache_remote in the stack (no password)")
    if getattr(args, "unit_costs", None) is not None:
        raise ConfigError("--unit-costs does not apply with --in-docker",
                          why="the file is outside the build context; inside the container "
                              "the pipeline keeps its own record in its cache mount",
                          fix="build without --in-docker to use another machine's record")
    out: list[str] = []
    if args.max_jobs is not None:
        out += ["--max-jobs", str(args.max_jobs)]
    if args.nvcc_threads is not None:
        out += ["--nvcc-threads", str(args.nvcc_threads)]
    if args.only:
        out += ["--only", *args.only]
    if args.no_fetch:
        out.append("--no-fetch")
    return out


def build_in_docker(args: argparse.Namespace, root: Path) -> int:
    """`build-wheels --in-docker`: run the same pipeline inside Dockerfile.build and move
    the exported wheels into wheels/<stack>/ only when the whole build succeeded."""
    stack = load_stack(args.stack or layout.default_stack(root))
    versions = load_versions(root / stack.docker.versions)
    output = (args.output_dir or layout.wheels_dir(root, stack.name)).resolve()
    export = temp_sibling(output)
    command = wheels_build_command(stack, versions, root, export, pipeline_args_from(args))
    reporter = _reporter("build", stack)
    try:
        reporter.say(f"vllm-wheels: stack {stack.name} in the build image "
                     f"({command.build_args['BASE_IMAGE']}); full log: {reporter.log_path}")
        _write_json(args.json, {"docker_build": command.to_dict(), "output": str(output)})
        if args.dry_run:
            print(command.shell(), flush=True)
            for ref in command.unresolved:
                reporter.warn(f"{ref} is pinned by tag only (digest unresolved): run "
                              "`nox -s update_images` on a machine that reaches the registry")
            return 0
        engine = require_docker()
        reporter.say(f"    Docker engine {engine}")
        _announce(reporter, command)
        remove(export)
        try:
            run(command.argv, reporter=reporter, env_changes=command.env, cwd=root,
                what=f"docker build of {BUILD_DOCKERFILE} (stack {stack.name})",
                fix="the pipeline's own error is in the output above; its exit code is not "
                    "passed through docker build")
            _publish_export(export, output, reporter)
        finally:
            remove(export)
        return 0
    finally:
        reporter.close()


def _publish_export(export: Path, output: Path, reporter: Reporter) -> None:
    wheels_dir = export / "wheels"
    files = sorted(p for p in wheels_dir.glob("*") if p.is_file()) if wheels_dir.is_dir() else []
    if not files:
        raise BuildError(f"the build image exported nothing into {wheels_dir}")
    output.mkdir(parents=True, exist_ok=True)
    for item in files:
        os.replace(item, output / item.name)
    logs = default_cache_root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for log in sorted((export / "logs").glob("*.log")):
        os.replace(log, logs / f"in-docker-{log.name}")
        reporter.say(f"    pipeline log from the container: {logs / f'in-docker-{log.name}'}")
    reporter.say("    wheels in " + str(output) + ": "
                 + ", ".join(p.name for p in files if p.suffix == ".whl"))


# ---------------------------------------------------------------- runtime image


def check_wheels(stack: Stack, wheels: Path) -> list[Path]:
    """Our wheels in `wheels`, all carrying this stack's local label."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        raise ConfigError(f"no wheels in {wheels}",
                          fix=f"build them first: nox -s build_wheels -- --stack {stack.path}")
    label = stack.local_label()
    for wheel in found:
        local = Version(wheel_info(wheel).version).local
        if local != label:
            raise ConfigError(f"{wheel.name} is labelled +{local}, not +{label} (stack "
                              f"{stack.name})", why="an image must hold one consistent set of "
                              "wheels, built against the torch it installs",
                              fix=f"rebuild into {wheels}, or point --wheels at this stack's "
                                  "wheels")
    return found


def index_requirements(stack: Stack) -> list[str]:
    """name==version+label for every package of the stack that makes a wheel."""
    from ..build.builders import makes_wheel

    reqs = []
    for spec in stack.packages:
        if not makes_wheel(spec):
            continue
        if not spec.source.version:
            raise ConfigError(f"--index: package {spec.name} has no version in the stack",
                              fix="add version = \"...\" to its source, or use --wheels DIR")
        reqs.append(f"{spec.name}=={spec.source.version}+{stack.local_label()}")
    return reqs


def download_from_index(stack: Stack, index: str, dest: Path, reporter: Reporter) -> None:
    """Our wheels only (no dependencies) from the internal index; pip's own config is
    ignored so nothing comes from elsewhere."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["python3", "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--index-url", index, "--dest", str(dest), *index_requirements(stack)],
        reporter=reporter, env_changes={"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": None,
                                        "PIP_CONSTRAINT": None},
        error_cls=SourceError, what=f"download the stack's wheels from {index}",
        fix="check that the index serves them (nox -s publish...) and is reachable")


def stage_wheels(wheels: Sequence[Path], dest: Path) -> None:
    """Put only these wheels into `dest`, the `wheels` build context: docker sends the
    whole context to the builder, and a wheel folder may also hold e.g. the multi-GB
    venv/ of `verify_throughput --prepare-candidate`. Hard links where possible."""
    remove(dest)
    dest.mkdir(parents=True)
    for wheel in wheels:
        try:
            os.link(wheel, dest / wheel.name)
        except OSError:  # another filesystem, or links not supported: copy
            shutil.copy2(wheel, dest / wheel.name)


def build_runtime(args: argparse.Namespace, root: Path) -> int:
    stack = load_stack(args.stack or layout.default_stack(root))
    versions = load_versions(root / stack.docker.versions)
    reporter = _reporter("runtime", stack)
    # The `wheels` build context: a folder holding only the wheels, removed afterwards.
    staging = default_cache_root() / "staging" / f"runtime-{stack.name}-{os.getpid()}"
    try:
        if not args.dry_run:
            remove(staging)
            if args.index:
                download_from_index(stack, args.index, staging, reporter)
                found = check_wheels(stack, staging)
            else:
                found = check_wheels(stack, (args.wheels or layout.wheels_dir(root, stack.name))
                                     .resolve())
                stage_wheels(found, staging)
            reporter.say(f"vllm-wheels: runtime image for stack {stack.name} from "
                         + ", ".join(w.name for w in found))
        command = runtime_build_command(stack, versions, root, staging, args.repository)
        assert command.tag is not None
        serve = runtime_run_command(command.tag)
        _write_json(args.json, {"docker_build": command.to_dict(),
                                "docker_run": serve.to_dict()})
        if args.dry_run:
            print(command.shell(), flush=True)
            print(serve.shell(), flush=True)
            for ref in command.unresolved:
                reporter.warn(f"{ref} is pinned by tag only (digest unresolved): run "
                              "`nox -s update_images` on a machine that reaches the registry")
            return 0
        reporter.say(f"    Docker engine {require_docker()}")
        _announce(reporter, command)
        run(command.argv, reporter=reporter, env_changes=command.env, cwd=root,
            what=f"docker build of {RUNTIME_DOCKERFILE} (stack {stack.name})",
            fix="a failing `verify-abi` step means the wheels do not match the image's torch "
                "(exit 8) or could not be checked (exit 9): see its report above")
        reporter.say(f"image {command.tag} built. Serve a model with:\n    {serve.shell()}")
        return 0
    finally:
        if not args.dry_run:
            remove(staging)
        reporter.close()

