"""`python -m vllm_wheels serve-index` (what `nox -s serve_index` runs)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from . import serve
from .cli_common import add_index_argument, index_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_index_argument(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; 0.0.0.0 = all)")
    parser.add_argument("--port", type=_port, default=8000, help="port (0 = any free port)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    parser.add_argument("--workers", type=int, default=None,
                        help="server processes sharing the port (default: one per CPU, as "
                             "nginx's `worker_processes auto`)")


def _port(text: str) -> int:
    """A TCP port, 0-65535: anything else is argparse's usage error (exit 2) here, not a
    traceback from the socket layer when the server binds."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535; 0 = any free "
                                         "port)")
    return port


def run(args: argparse.Namespace) -> int:
    index = index_dir(args)
    index.require()
    workers = serve.default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise ConfigError(f"--workers {workers}: at least 1")
    serve.serve_forever(index, args.host, args.port, quiet=args.quiet, workers=workers)
    return 0
