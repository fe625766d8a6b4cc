"""Write the candidate stack (build/stacks/trial-vllm-VERSION.toml) in the format
load_stack reads, and prove it: the file is read back with load_stack and must describe
exactly the stack that was meant (same digest) before it replaces anything.

Also the promotion commands: what turns the trial stack into the default one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..build.stack import Stack, load_stack, render_toml
from ..cache import remove, temp_sibling
from ..errors import ConfigError


def render_stack(stack: Stack, *, header: Sequence[str],
                 notes: Mapping[str, Sequence[str]] | None = None) -> str:
    """The stack as TOML, written from the stack schema (stack.render_toml). `notes` maps a
    package name to comment lines written above it."""
    return render_toml(stack, header=header, notes=notes)


def leave_out(text: str, table: str, key: str, why: str) -> str:
    """`text` with the line `key = ...` of `[table]` replaced by a comment saying why it is
    left out: a value the trial could not read is not written as if it had been."""
    why = " ".join(why.split())  # one comment line, whatever the reason's text holds
    lines = text.split("\n")
    start = lines.index(f"[{table}]")
    for index in range(start + 1, len(lines)):
        line = lines[index]
        if line.startswith("["):
            break
        if line.startswith(f"{key} = "):
            lines[index:index + 1] = [f"# {key} = ?  LEFT OUT (blocker): {why}"]
            return "\n".join(lines)
    raise ValueError(f"no {key} in [{table}]")


def write_stack(stack: Stack, target: Path, *, header: Sequence[str],
                notes: Mapping[str, Sequence[str]] | None = None,
                unknown: Mapping[tuple[str, str], str] | None = None) -> Stack:
    """Write atomically and read back; refuse (and leave nothing) if the file does not
    load as the same stack.

    unknown: (table, key) -> why, for values the trial could not read. The stack's values
    there are placeholders: the file is proven with them, then written with those keys
    left out (a comment with the blocker in their place), so it does not load until the
    user sets them. The proven in-memory stack is returned."""
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
        if unknown:
            for (table, key), why in unknown.items():
                text = leave_out(text, table, key, why)
            tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        remove(tmp)
        raise
    return dataclasses.replace(loaded, path=target) if unknown else load_stack(target)


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
