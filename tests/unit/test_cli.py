"""The command line's last-resort handling: a full disk the stages did not expect to hit
is exit 7 with a message, never a traceback."""

from __future__ import annotations

import argparse
import signal
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from vllm_wheels import cli


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    """cli.main turns SIGTERM into an interrupt; give pytest its own handler back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def test_unexpected_full_disk_is_exit_7(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is Linux-only")
    # A command registered for this test whose write hits a real ENOSPC (/dev/full).
    module = types.ModuleType("vllm_wheels_test_fullwrite")

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--size", type=int, default=1 << 16)

    def run(args: argparse.Namespace) -> int:
        with open("/dev/full", "wb") as sink:
            sink.write(b"x" * args.size)
            sink.flush()
        return 0

    module.add_arguments = add_arguments  # type: ignore[attr-defined]
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "full-write", (module.__name__, "writes to /dev/full"))
    assert cli.main(["full-write"]) == 7
    err = capsys.readouterr().err
    assert "disk full" in err and "No space left on device" in err and "fix:" in err
    assert "Traceback" not in err


def test_other_os_errors_are_not_disguised(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("vllm_wheels_test_missing")
    module.add_arguments = lambda parser: None  # type: ignore[attr-defined]

    def run(args: argparse.Namespace) -> int:
        Path("/nonexistent-dir-xyz/file").read_text()
        return 0

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "missing-read", (module.__name__, "reads nothing"))
    with pytest.raises(FileNotFoundError):
        cli.main(["missing-read"])
