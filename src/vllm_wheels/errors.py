"""Error hierarchy. Each class carries its own exit code so that scripts and CI can
tell a bad stack file from a missing nvcc from a failed compile without parsing text.

Every error is written as three parts: what happened, why it matters, what to do.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a failure the user can act on (never a bug in this tool)."""

    exit_code = 1
    kind = "error"

    def __init__(self, what: str, *, why: str = "", fix: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.why = why
        self.fix = fix

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
        InterruptedError_,
    )
}
