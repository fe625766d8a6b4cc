"""The default candidate arm: a venv made from the stack's wheels (wheels/<stack>/venv).

Made with the stack's Python; torch and its companions come first, at exactly the pinned
versions from the stack's index; then the wheels, with their dependencies from PyPI, under
a constraint that keeps that torch; then verify_abi against the result, so a venv whose
wheels do not match its own torch is never benchmarked. It is built beside its final
path and renamed (scripts relocated), and reused while the wheel set is unchanged.
The marker records verify_abi's status: a venv it could not fully check ("unknown") is
kept (it is expensive to make) with a warning, and checked again each time it is reused.
"""

from __future__ import annotations

import json
from pathlib import Path

from ... import layout
from ...build.sources import sha256_file
from ...build.stack import Stack
from ...build.toolchain import find_python, relocate_venv
from ...cache import publish_dir, remove, temp_sibling
from ...errors import AbiMismatchError, CouldNotRunError, ToolchainError
from ...log import Reporter
from ...runner import run
from .. import abi

MARKER = layout.CANDIDATE_MARKER


def wheel_set(wheels_dir: Path) -> dict[str, str]:
    return {w.name: sha256_file(w) for w in sorted(wheels_dir.glob("*.whl"))}


def ensure_candidate_venv(stack: Stack, wheels_dir: Path, reporter: Reporter) -> Path:
    """wheels_dir/venv with the stack's wheels installed; returns the venv path."""
    wheels = wheel_set(wheels_dir)
    if not wheels:
        raise CouldNotRunError(f"no wheels in {wheels_dir} to make the candidate venv from",
                               fix="build them first (`nox -s build_wheels`) or pass "
                                   "--candidate venv:PATH|image:REF|url:URL")
    venv = wheels_dir / "venv"
    marker = venv / MARKER
    recorded = json.loads(marker.read_text()) if marker.exists() else {}
    if recorded.get("wheels") == wheels:
        reporter.say(f"candidate venv {venv}: reused (same wheels)")
        if recorded.get("verify_abi") != "pass":
            reporter.say(f"candidate venv {venv}: verify_abi was "
                         f"{recorded.get('verify_abi', 'not recorded')}; checking again")
            _verify(venv, wheels_dir, wheels, recorded.get("torch", ""), reporter)
        return venv
    python = find_python(stack.python)
    if python is None:
        raise ToolchainError(f"Python {stack.python} not found (the stack's Python)",
                             fix=f"install Python {stack.python} or pass --candidate")
    tmp = temp_sibling(venv)
    remove(tmp)
    env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    torch_req = f"torch=={stack.torch.version}"
    index_url = ["--index-url", stack.torch.simple_url] if stack.torch.simple_url else []
    try:
        reporter.say(f"candidate venv {venv}: creating (Python {stack.python}, {torch_req}, "
                     f"{len(wheels)} wheel(s))")
        run([python, "-m", "venv", tmp], reporter=reporter, error_cls=CouldNotRunError,
            what="create the candidate venv")
        pip: list[str | Path] = [tmp / "bin" / "python", "-m", "pip", "install"]
        companions = [f"{k}=={v}" for k, v in sorted(stack.torch.companions.items())]
        run([*pip, *index_url, torch_req, *companions], reporter=reporter, env_changes=env,
            error_cls=CouldNotRunError, what=f"install {torch_req} into the candidate venv",
            fix="check the stack's [torch] index and network access")
        constraints = tmp / "torch-constraint.txt"
        constraints.write_text(torch_req + "\n")
        run([*pip, "-c", constraints, *(wheels_dir / name for name in wheels)],
            reporter=reporter, env_changes=env, error_cls=CouldNotRunError,
            what="install the stack's wheels (and their dependencies) into the candidate venv",
            fix="the wheels' dependencies come from PyPI: check network access")
    except BaseException:
        remove(tmp)
        raise
    remove(venv)
    publish_dir(tmp, venv)
    relocate_venv(tmp, venv)
    _verify(venv, wheels_dir, wheels, torch_req, reporter)
    return venv


def _verify(venv: Path, wheels_dir: Path, wheels: dict[str, str], torch_req: str,
            reporter: Reporter) -> None:
    """verify_abi of the wheels against the venv's torch; the marker records its status."""
    report = abi.verify([wheels_dir / name for name in wheels], venv / "bin" / "python",
                        work_dir=wheels_dir / ".verify-work", reporter=reporter)
    abi.write_json(report, venv / layout.VERIFY_REPORT_FILENAME)
    if report.status == "fail":
        remove(venv)
        raise AbiMismatchError(f"the candidate venv's wheels fail verify_abi against its own "
                               f"torch:\n{report.render()}",
                               fix="rebuild the wheels (`nox -s build_wheels`)")
    if report.status != "pass":
        reporter.warn(f"verify_abi could not check everything in the candidate venv {venv} "
                      f"(status {report.status}; see {venv / 'verify-abi.json'}); the venv is "
                      "kept and checked again on its next use")
    tmp_marker = venv / (MARKER + ".tmp")
    tmp_marker.write_text(json.dumps({"schema_version": 1, "wheels": wheels, "torch": torch_req,
                                      "verify_abi": report.status}, indent=2) + "\n")
    tmp_marker.replace(venv / MARKER)
