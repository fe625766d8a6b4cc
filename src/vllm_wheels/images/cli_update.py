"""`python -m vllm_wheels update-images`: look up the digest of every image tag in the
versions file through the registry HTTP API and record it, then bring the Dockerfiles'
ARG defaults in line with the default stack. Nothing is written unless every lookup
succeeded; no digest is ever guessed."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import layout
from ..build.stack import load_stack
from .commands import synced_dockerfiles
from .versions import load_versions, resolve_all, set_pinned, today, write_atomically


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", type=Path, default=None,
                        help="stack whose versions file to update (default: build/stack.toml)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="resolve only these [images.NAME] entries")
    parser.add_argument("--no-resolve", action="store_true",
                        help="ask no registry: only rewrite the Dockerfiles' ARG defaults "
                             "from the stack and the versions file as they are")


def run(args: argparse.Namespace) -> int:
    root = layout.repo_root()
    stack = load_stack(args.stack or layout.default_stack(root))
    versions_path = root / stack.docker.versions
    versions = load_versions(versions_path)
    files: dict[Path, str] = {}
    if not args.no_resolve:
        pins = resolve_all(versions, args.only)
        for name, pinned in pins.items():
            old = versions.images[name].pinned
            print(f"{name}: {pinned}" + ("" if old == pinned else f"  (was {old or 'unresolved'})"),
                  flush=True)
        files[versions_path] = set_pinned(versions_path.read_text(encoding="utf-8"), pins,
                                          note=f"resolved {today()} by update_images")
        write_atomically(files)
    # The Dockerfiles mirror the (now updated) versions file.
    changed = synced_dockerfiles(root)
    write_atomically(changed)
    for path in changed:
        print(f"updated ARG defaults in {path.relative_to(root)}", flush=True)
    if not changed:
        print("Dockerfile ARG defaults already match the stack", flush=True)
    return 0
