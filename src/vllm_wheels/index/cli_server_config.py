"""`python -m vllm_wheels index-server-config` (what `nox -s index_server_config` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import server_config
from .cli_common import add_index_argument, index_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_index_argument(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="directory for nginx/ and object-storage/ (other roots' files "
                             "there are kept: run once per root to serve several)")
    parser.add_argument("--prefix", default="",
                        help="URL prefix of this root, e.g. /sm120 serves /sm120/simple/ and "
                             "/sm120/files/ (default: none, /simple/)")
    parser.add_argument("--listen", default="8080",
                        help="nginx.conf's listen: PORT or ADDRESS:PORT (default: 8080)")
    parser.add_argument("--worker-user", default=None,
                        help="nginx.conf's `user`: who the workers run as when nginx starts "
                             "as root (default: nginx's own, nobody)")


def run(args: argparse.Namespace) -> int:
    root = server_config.make_root(index_dir(args), args.prefix)
    out = args.out.resolve()
    written = server_config.write_configs(root, out, listen=args.listen,
                                          worker_user=args.worker_user)
    print(f"{root.index.root} at {root.prefix}/simple/ -> {out}")
    for path in written:
        print(f"  {path.relative_to(out)}")
    print(f"run it: nginx -p {out / 'nginx'} -c nginx.conf -e stderr   "
          "(TLS: left to you, see nginx.conf)", flush=True)
    return 0
