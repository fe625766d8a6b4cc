"""The trial's stages (plan, build, abi, throughput) and the state file that makes them
resumable: each finished stage is recorded as soon as it ends, so a trial interrupted
after the plan or the build continues from there when run again with the same inputs
(the same current stack, request and patches; anything else starts a fresh trial).

Stages other than the plan run the existing commands as subprocesses, exactly as a user
would (`python -m vllm_wheels build-wheels --stack FILE`, `verify-abi --wheels DIR`), each
with its own log file, through runner.run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..cache import write_atomic
from ..errors import EXIT_CODES, InterruptedError_, PipelineError
from ..log import Reporter, format_duration
from ..runner import run

STAGES = ("plan", "build", "abi", "throughput")
STATE_SCHEMA_VERSION = 1
EXIT_MEANINGS = {code: kind for kind, code in EXIT_CODES.items()}
NO_GPU = "not run here: needs a GPU (and the verify_throughput session)"
# The throughput stage runs this command once it is registered in commands.COMMANDS.
THROUGHPUT_COMMAND = "verify-throughput"


def gpu_present() -> bool:
    """A GPU host has nvidia-smi on PATH (the driver installs it)."""
    return shutil.which("nvidia-smi") is not None


def default_stages(gpu: bool) -> list[str]:
    """Everything this machine can run: the throughput stage needs a GPU."""
    return [s for s in STAGES if s != "throughput" or gpu]


def parse_stages(text: str | None, gpu: bool) -> list[str]:
    from ..errors import ConfigError

    if not text:
        return default_stages(gpu)
    wanted = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown or not wanted:
        raise ConfigError(f"unknown stage(s): {', '.join(unknown) or '(none given)'}",
                          fix=f"--stages takes a comma-separated subset of {','.join(STAGES)}")
    if "plan" not in wanted:
        wanted.insert(0, "plan")  # every later stage needs the candidate stack
    return [s for s in STAGES if s in wanted]


class StageStatus(StrEnum):
    """How a stage of the trial ended (the values of the state file and the report)."""

    PASSED = "passed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    NOT_RUN = "not-run"  # this machine cannot run it (no GPU)
    SKIPPED = "skipped"  # what it needs was not made
    NOT_REQUESTED = "not-requested"  # left out by --stages (in the report only)


@dataclass
class StageResult:
    name: str
    status: StageStatus
    seconds: float | None = None
    exit_code: int | None = None
    detail: str = ""
    log: str | None = None
    command: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    finished: str = ""
    reused: bool = False

    @property
    def meaning(self) -> str:
        if self.exit_code is None:
            return ""
        return "ok" if self.exit_code == 0 else EXIT_MEANINGS.get(self.exit_code, "error")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": self.seconds,
                "exit_code": self.exit_code, "exit_meaning": self.meaning,
                "detail": self.detail, "log": self.log, "command": self.command,
                "outputs": self.outputs, "finished": self.finished, "reused": self.reused}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageResult:
        return cls(name=data["name"], status=StageStatus(data["status"]),
                   seconds=data.get("seconds"),
                   exit_code=data.get("exit_code"), detail=data.get("detail", ""),
                   log=data.get("log"), command=list(data.get("command", [])),
                   outputs=dict(data.get("outputs", {})), finished=data.get("finished", ""))


def trial_key(parts: Mapping[str, Any], patch_dirs: Sequence[Path]) -> str:
    """What must be equal for a saved trial to be continued: the inputs and every file of
    the patch directories involved."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for directory in sorted({d.resolve() for d in patch_dirs}):
        if directory.is_dir():
            for item in sorted(p for p in directory.rglob("*") if p.is_file()):
                digest.update(str(item.relative_to(directory)).encode())
                digest.update(hashlib.sha256(item.read_bytes()).digest())
    return digest.hexdigest()


class TrialState:
    """The state file: the plan's result and each stage's outcome, rewritten atomically
    after every stage."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.plan: dict[str, Any] | None = None
        self.results: dict[str, StageResult] = {}
        self.note = ""

    @classmethod
    def load(cls, path: Path, key: str, *, fresh: bool = False) -> TrialState:
        state = cls(path, key)
        if fresh or not path.is_file():
            state.note = "fresh trial (--fresh)" if fresh and path.is_file() else "new trial"
            return state
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            state.note = f"the state file {path} is unreadable: starting over"
            return state
        if data.get("schema_version") != STATE_SCHEMA_VERSION or data.get("key") != key:
            state.note = ("the inputs changed since the saved trial (stack, request or "
                          "patches): starting over")
            return state
        state.plan = data.get("plan")
        state.results = {name: StageResult.from_dict(item)
                         for name, item in data.get("results", {}).items()}
        done = [n for n in STAGES
                if n in state.results and state.results[n].status == StageStatus.PASSED]
        state.note = f"continuing the saved trial (done: {', '.join(done) or 'nothing'})"
        return state

    def passed(self, name: str) -> bool:
        result = self.results.get(name)
        return result is not None and result.status == StageStatus.PASSED

    def record(self, result: StageResult) -> None:
        result.finished = result.finished or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.results[result.name] = result
        self.save()

    def save(self) -> None:
        data = {"schema_version": STATE_SCHEMA_VERSION, "key": self.key, "plan": self.plan,
                "results": {n: r.to_dict() for n, r in self.results.items()}}
        write_atomic(self.path, json.dumps(data, indent=2, default=str) + "\n")


def _exit_code(exc: PipelineError) -> int:
    """The stage command's own exit code (runner.run records it), else the error's."""
    return exc.returncode if exc.returncode is not None else exc.exit_code


def run_command_stage(name: str, argv: Sequence[str], *, log_path: Path, reporter: Reporter,
                      outputs: Mapping[str, str] | None = None,
                      env_changes: Mapping[str, str | None] | None = None,
                      cwd: Path | None = None) -> StageResult:
    """Run one stage command; its output goes to its own log (and, condensed, to the
    console). A failure is a result, not an exception; Ctrl-C is recorded and re-raised."""
    stage_reporter = Reporter(log_path, stream=open(os.devnull, "w"))  # noqa: SIM115
    started = time.monotonic()
    result = StageResult(name=name, status=StageStatus.PASSED, command=list(argv),
                         log=str(log_path), outputs=dict(outputs or {}))
    reporter.say(f"    + {' '.join(argv)}")
    reporter.say(f"    stage log: {log_path}")
    try:
        run(list(argv), reporter=stage_reporter, env_changes=env_changes, cwd=cwd,
            on_line=lambda line: print(f"    | {line}", file=reporter.stream, flush=True),
            what=f"trial stage {name}")
        result.exit_code = 0
    except (InterruptedError_, KeyboardInterrupt):
        result.status, result.detail = StageStatus.INTERRUPTED, "interrupted (Ctrl-C or SIGTERM)"
        result.seconds = round(time.monotonic() - started, 1)
        raise
    except PipelineError as exc:
        result.status = StageStatus.FAILED
        result.exit_code = _exit_code(exc)
        # The child's own one-line error (our CLIs print "ERROR (kind, exit N): what")
        # says most; the rest is in the stage log.
        tail = [line.strip() for line in exc.what.splitlines()[1:] if line.strip()]
        errors = [line for line in tail if line.startswith("ERROR")]
        shown = (errors or tail[-1:] or [""])[-1]
        result.detail = f"exit {result.exit_code} ({result.meaning})" + (
            f": {shown}" if shown else "")
    finally:
        result.seconds = round(time.monotonic() - started, 1)
        stage_reporter.stream.close()
        stage_reporter.close()
    return result


@dataclass(frozen=True)
class StagePaths:
    stack: Path
    wheels: Path
    abi_json: Path
    throughput_json: Path
    logs: Path
    cache: Path


def stage_commands(paths: StagePaths, *, abi_python: str | None = None) -> dict[str, list[str]]:
    """The commands the stages run: the project's own CLI, as a user would run it."""
    cli = [sys.executable, "-m", "vllm_wheels"]
    # Without --python, verify-abi checks against a venv made from the stack it is given:
    # the trial stack's torch, i.e. the runtime the candidate would ship with.
    abi = [*cli, "verify-abi", "--wheels", str(paths.wheels), "--json", str(paths.abi_json),
           "--stack", str(paths.stack), "--cache-dir", str(paths.cache)]
    if abi_python:
        abi += ["--python", abi_python]
    return {
        "build": [*cli, "build-wheels", "--stack", str(paths.stack), "--output-dir",
                  str(paths.wheels), "--cache-dir", str(paths.cache)],
        "abi": abi,
        # verify-throughput makes its candidate venv from the trial's wheels and the trial
        # stack's torch (wheels/<...>/venv, verify_abi-gated); the baseline defaults to the
        # nightly image named in verify/baseline.toml.
        "throughput": [*cli, THROUGHPUT_COMMAND, "--stack", str(paths.stack), "--wheels",
                       str(paths.wheels), "--json", str(paths.throughput_json), "--report",
                       str(paths.throughput_json.with_suffix(".md"))],
    }


def run_stages(state: TrialState, stages: Sequence[str], *, commands: Mapping[str, Sequence[str]],
               paths: StagePaths, reporter: Reporter, gpu: bool, throughput_available: bool,
               first_step: int, total_steps: int,
               on_result: Callable[[], None] = lambda: None) -> list[StageResult]:
    """Run the stages after the plan, in order, skipping those a saved trial already
    passed. Returns the results of this run (reused ones included)."""
    results: list[StageResult] = []
    step = first_step
    stamp = time.strftime("%Y%m%d-%H%M%S")
    upstream_ran = False  # once a stage really runs, what later stages saved is stale
    for name in ("build", "abi", "throughput"):
        if name not in stages:
            continue
        reporter.step_at(step, total_steps, f"stage {name}")
        step += 1
        saved = state.results.get(name)
        if upstream_ran and saved is not None:
            del state.results[name]
            saved = None
        if saved is not None and saved.status == StageStatus.PASSED and (
                name != "build" or paths.wheels.is_dir()):
            saved.reused = True
            reporter.say(f"    passed in the saved trial ({saved.finished}); reused")
            results.append(saved)
            reporter.step_done()
            continue
        try:
            result = _one_stage(name, state, commands, paths, reporter, gpu,
                                throughput_available, stamp)
        except (InterruptedError_, KeyboardInterrupt):
            state.record(StageResult(name, StageStatus.INTERRUPTED,
                                     detail="interrupted (Ctrl-C or SIGTERM): re-run the same "
                                            "command to continue from this stage"))
            on_result()
            raise
        state.record(result)
        on_result()
        results.append(result)
        upstream_ran = upstream_ran or result.status not in (StageStatus.NOT_RUN,
                                                             StageStatus.SKIPPED)
        reporter.step_done(result.status)
    return results


def _one_stage(name: str, state: TrialState, commands: Mapping[str, Sequence[str]],
               paths: StagePaths, reporter: Reporter, gpu: bool, throughput_available: bool,
               stamp: str) -> StageResult:
    # What the machine cannot do at all comes first: it holds whatever the build did.
    if name == "throughput":
        if not gpu:
            return StageResult(name, StageStatus.NOT_RUN, detail=NO_GPU)
        if not throughput_available:
            return StageResult(name, StageStatus.NOT_RUN,
                               detail=f"not run here: the {THROUGHPUT_COMMAND} command does not "
                                      "exist yet (needs the verify_throughput session)")
    left_out = (state.plan or {}).get("candidate_stack", {}).get("left_out") or []
    if name == "build" and left_out:
        return StageResult(name, StageStatus.SKIPPED,
                           detail=f"the candidate stack leaves out {', '.join(left_out)} (could "
                                  "not be read; see the blockers): set them, then build it")
    if name in ("abi", "throughput") and not state.passed("build"):
        build = state.results.get("build")
        why = f"build {build.status}" if build else "build not run"
        return StageResult(name, StageStatus.SKIPPED,
                           detail=f"needs the build stage's wheels ({why})")
    outputs = {"build": {"wheels": str(paths.wheels)},
               "abi": {"report": str(paths.abi_json)},
               "throughput": {"report": str(paths.throughput_json)}}[name]
    log_path = paths.logs / f"trial-{name}-{stamp}.log"
    result = run_command_stage(name, commands[name], log_path=log_path, reporter=reporter,
                               outputs=outputs)
    reporter.say(f"    {name}: {result.status} in {format_duration(result.seconds or 0)}"
                 + (f" ({result.detail})" if result.detail else ""))
    return result
