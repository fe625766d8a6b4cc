"""Error hierarchy. Each class carries its own exit code so that scripts and CI can
tell a bad stack file from a missing nvcc from a failed compile without parsing text.

Every error is written as three parts: what happened, why it matters, what to do.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a failure the user can act on (never a bug in this tool)."""

    exit_code = 1
    kind = "error"

    def __init__(self, what: str, *, why: str = "", fix: str = "",
                 returncode: int | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.why = why
        self.fix = fix
        # Exit status of the child process that failed, when a subprocess is the cause.
        self.returncode = returncode

    def render(self) -> str:
        lines = [f"ERROR ({self.kind}, exit {self.exit_code}): {self.what}"]
        if self.why:
            lines.append(f"  why: {self.why}")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


class ConfigError(PipelineError):
    """The stack file or the command line is invalid."""

    exit_code = 2
    kind = "configuration"


class ToolchainError(PipelineError):
    """nvcc, cmake, ninja, Python or the pinned torch is missing or mismatched."""

    exit_code = 3
    kind = "toolchain"


class SourceError(PipelineError):
    """A source could not be downloaded, verified or unpacked."""

    exit_code = 4
    kind = "source"


class PatchError(PipelineError):
    """A patch in the series does not apply."""

    exit_code = 5
    kind = "patch"


class BuildError(PipelineError):
    """A configure, compile or packaging step failed."""

    exit_code = 6
    kind = "build"


class DiskFullError(PipelineError):
    """The disk filled up; partial outputs were removed."""

    exit_code = 7
    kind = "disk full"


class AbiMismatchError(PipelineError):
    """verify_abi found that a wheel does not match the runtime environment."""

    exit_code = 8
    kind = "ABI mismatch"


class CannotCheckError(PipelineError):
    """verify_abi could not check: the runtime interpreter or its torch is missing/unreadable."""

    exit_code = 9
    kind = "could not check"


class IndexPublishError(PipelineError):
    """The wheel index refused an operation (unverified wheel, changed immutable file, ...)."""

    exit_code = 10
    kind = "index"


class ThroughputRegressionError(PipelineError):
    """verify_throughput: the candidate is slower than the baseline with confidence."""

    exit_code = 11
    kind = "throughput regression"


class ThroughputInconclusiveError(PipelineError):
    """verify_throughput: run-to-run spread too wide to decide."""

    exit_code = 12
    kind = "throughput inconclusive"


class CouldNotRunError(PipelineError):
    """verify_throughput / trial: an arm or stage could not be started (no GPU, no server...)."""

    exit_code = 13
    kind = "could not run"


class NotReproducibleError(PipelineError):
    """build_wheels --verify-reproducible: a rebuild from clean trees gave different bytes."""

    exit_code = 14
    kind = "not reproducible"


class NoGpuError(PipelineError):
    """index-root: this machine has no GPU to choose an index root for."""

    exit_code = 15
    kind = "no GPU"


class NoMatchingTargetError(PipelineError):
    """index-root: no target of the stack has code for this machine's GPU."""

    exit_code = 16
    kind = "no matching target"


class InterruptedError_(PipelineError):  # noqa: N801 - avoid shadowing the builtin
    """The user interrupted the run (Ctrl-C / SIGTERM); partial outputs were removed."""

    exit_code = 130
    kind = "interrupted"


EXIT_CODES: dict[str, int] = {
    cls.kind: cls.exit_code
    for cls in (
        ConfigError,
        ToolchainError,
        SourceError,
        PatchError,
        BuildError,
        DiskFullError,
        AbiMismatchError,
        CannotCheckError,
        IndexPublishError,
        ThroughputRegressionError,
        ThroughputInconclusiveError,
        CouldNotRunError,
        NotReproducibleError,
        NoGpuError,
        NoMatchingTargetError,
        InterruptedError_,
    )
}
