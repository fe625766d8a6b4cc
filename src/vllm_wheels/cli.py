"""Command line: `python -m vllm_wheels COMMAND [...]` (what the nox sessions run).
Parses arguments, maps errors to exit codes; no logic of its own.

Every stage registers its commands in `commands.COMMANDS` as (module, help): the module
provides `add_arguments(parser)` and `run(args) -> int`, and is imported only when its
command runs, so `build-wheels` never pays for the others' imports.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys

from .commands import COMMANDS
from .errors import DiskFullError, InterruptedError_, PipelineError

__all__ = ["COMMANDS", "main"]


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-wheels")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        # Parsers of the other stages are built only for their own command (or --help),
        # keeping the import cost off the build.
        command_parser = sub.add_parser(name, help=help_text)
        if not argv or argv[0] in (name, "-h", "--help"):
            importlib.import_module(module).add_arguments(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _build_parser(argv)
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        module, _help = COMMANDS[args.command]
        code: int = importlib.import_module(module).run(args)
        return code
    except KeyboardInterrupt:
        err = InterruptedError_("interrupted", fix="re-run; finished steps are reused")
        print(err.render(), file=sys.stderr)
        return err.exit_code
    except PipelineError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # The stages turn ENOSPC into exit 7 where they write (and remove what they left);
        # this is the net for a write no stage expected to fail, so a full disk is never a
        # traceback.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        full = DiskFullError(f"disk full: {exc}",
                             why="a write failed for lack of space (or over a quota)",
                             fix=f"free space on the filesystem of {exc.filename or 'the cache'}"
                                 " and run the command again; finished steps are reused")
        print(full.render(), file=sys.stderr)
        return full.exit_code


if __name__ == "__main__":
    sys.exit(main())
