"""Write the candidate stack (build/stacks/trial-vllm-VERSION.toml) in the format
load_stack reads, and prove it: the file is read back with load_stack and must describe
exactly the stack that was meant (same digest) before it replaces anything.

Also the promotion commands: what turns the trial stack into the default one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from ..cache import remove, temp_sibling
from ..errors import ConfigError
from ..stack import _BUILDER_OPTIONS, PackageSpec, Source, Stack, _default_builder, load_stack

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
PYPI_SIMPLE_URL = "https://pypi.org/simple"


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: Any) -> str:
    # JSON's string escapes are a subset of TOML's basic-string escapes.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return _inline(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _inline(table: Mapping[str, Any]) -> str:
    items = [f"{_key(k)} = {_value(v)}" for k, v in table.items() if v is not None]
    return "{ " + ", ".join(items) + " }" if items else "{}"


def _source_table(source: Source) -> dict[str, Any]:
    if source.kind == "pypi":
        table: dict[str, Any] = {"pypi": source.version, "sha256": source.sha256}
        if source.index.rstrip("/") != PYPI_SIMPLE_URL:
            table["index"] = source.index
        return table
    if source.kind == "git":
        return {"git": source.url, "commit": source.commit, "version": source.version}
    return {"path": source.path, "sha256": source.sha256, "version": source.version}


def default_patch_dir(spec: PackageSpec) -> str:
    return f"patches/{canonicalize_name(spec.name)}/{spec.source.version or 'local'}"


def render_stack(stack: Stack, *, header: Sequence[str],
                 notes: Mapping[str, Sequence[str]] | None = None) -> str:
    """The stack as TOML. `notes` maps a package name to comment lines written above it."""
    notes = notes or {}
    lines = [f"# {h}" if h else "#" for h in header]
    lines += ["schema_version = 1", f"name = {_value(stack.name)}",
              f"description = {_value(stack.description)}", f"python = {_value(stack.python)}",
              f"cuda_arch_list = {_value(' '.join(stack.cuda_arch_list))}"]
    if stack.label:
        lines.append(f"label = {_value(stack.label)}")
    t = stack.torch
    lines += ["", "[torch]", f"version = {_value(t.version)}", f"cuda = {_value(t.cuda)}"]
    if t.index:
        lines.append(f"index = {_value(t.index)}")
    if t.sha256:
        lines.append(f"sha256 = {_value(t.sha256)}")
    if t.companions:
        lines.append(f"companions = {_inline(dict(t.companions))}")
    c = stack.cuda_toolkit
    lines += ["", "[cuda_toolkit]", f"version = {_value(c.version)}", f"source = {_value(c.source)}"]
    if c.pip_version:
        lines.append(f"pip_version = {_value(c.pip_version)}")
    b = stack.build
    lines += ["", "[build]", f"build_type = {_value(b.build_type)}",
              f"max_jobs = {b.max_jobs}", f"nvcc_threads = {b.nvcc_threads}",
              f"gb_per_job = {b.gb_per_job!r}", f"compile_cache = {_value(b.compile_cache)}"]
    docker = getattr(stack, "docker", None)
    if docker is not None:
        lines += ["", "[docker]"]
        lines += [f"{k} = {_value(v)}" for k, v in dataclasses.asdict(docker).items()
                  if v is not None]
    for spec in stack.packages:
        lines.append("")
        lines += [f"# {n}" for n in notes.get(spec.name, ())]
        lines.append(f"[packages.{_key(spec.name)}]")
        if spec.builder != _default_builder(spec.name):
            lines.append(f"builder = {_value(spec.builder)}")
        lines.append(f"source = {_inline(_source_table(spec.source))}")
        if spec.patches != default_patch_dir(spec):
            lines.append(f"patches = {_value(spec.patches)}")
        defaults = {k: d for k, (_kind, d) in _BUILDER_OPTIONS[spec.builder].items()}
        options = {k: v for k, v in spec.options.items() if defaults.get(k) != v}
        if options:
            lines.append(f"options = {_inline(options)}")
        if spec.env:
            lines.append(f"env = {_inline(dict(spec.env))}")
        for ext_name, override in spec.externals.items():
            lines.append(f"[packages.{_key(spec.name)}.externals.{_key(ext_name)}]")
            for key in ("path", "url", "commit", "from_source"):
                value = getattr(override, key)
                if value is not None:
                    lines.append(f"{key} = {_value(value)}")
    return "\n".join(lines) + "\n"


def write_stack(stack: Stack, target: Path, *, header: Sequence[str],
                notes: Mapping[str, Sequence[str]] | None = None) -> Stack:
    """Write atomically and read back; refuse (and leave nothing) if the file does not
    load as the same stack."""
    text = render_stack(stack, header=header, notes=notes)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    tmp.write_text(text, encoding="utf-8")
    try:
        loaded = load_stack(tmp)
        # Everything must read back, not only what the digest covers (description, [docker]).
        if {**loaded.to_dict(), "path": ""} != {**stack.to_dict(), "path": ""}:
            raise ConfigError(f"the trial stack written to {target} does not read back as the "
                              "stack that was meant (a bug in the writer)",
                              fix=f"report it with the file {tmp}")
        os.replace(tmp, target)
    except BaseException:
        remove(tmp)
        raise
    return load_stack(target)


def _bre_escape(text: str) -> str:
    """Escape for a sed basic regular expression (re.escape also escapes '-', which sed
    does not define)."""
    return re.sub(r"([.\[\]*^$\\/])", r"\\\1", text)


def promotion_commands(*, repo_root: Path, trial_stack: Path, default_stack: Path,
                       default_name: str, trial_name: str,
                       moves: Sequence[tuple[str, str]],
                       drop: Sequence[tuple[str, str]]) -> list[str]:
    """Shell commands (run from the repository root) that make the trial the default stack.

    moves: (old patch dir, new patch dir) for series carried over to the new version.
    drop: (patch dir after the moves, patch name) for patches already upstream.
    """

    def rel(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(repo_root.resolve()))
        except ValueError:
            return str(path)

    commands = []
    for old, new in moves:
        commands.append(f"mv {shlex.quote(old)} {shlex.quote(new)}")
    for directory, name in drop:
        commands.append(f"rm {shlex.quote(directory + '/' + name)}")
        commands.append(f"sed -i {shlex.quote('/^' + _bre_escape(name) + '$/d')} "
                        f"{shlex.quote(directory + '/series')}")
    name_expr = 's|^name = "' + trial_name + '"$|name = "' + default_name + '"|'
    seds = ["-e " + shlex.quote(name_expr), "-e " + shlex.quote("/^# trial: /d")]
    for old, new in moves:
        seds.append("-e " + shlex.quote('s|^patches = "' + old + '"$|patches = "' + new + '"|'))
    commands.append(f"sed {' '.join(seds)} {shlex.quote(rel(trial_stack))} > "
                    f"{shlex.quote(rel(default_stack))}")
    # The old stack file's comments are not carried over: review before committing.
    commands.append(f"git diff {shlex.quote(rel(default_stack))}")
    commands.append(f"nox -s build_wheels -- --stack {shlex.quote(rel(default_stack))} --dry-run")
    return commands
