"""Optional upload of published wheels to an existing remote index (pypiserver, devpi,
Artifactory, a private PyPI, ...) through `uv publish` or twine.

Configured in an index config file (default build/index.toml), which holds no secrets:

    schema_version = 1
    [upload]
    url = "https://devpi.example.com/team/prod/"          # the upload endpoint
    tool = "uv"                                           # "uv" (default) or "twine"
    check_url = "https://devpi.example.com/team/prod/+simple/"  # uv: skip files already there

Credentials come only from the environment, under the tools' own variable names:
UV_PUBLISH_USERNAME / UV_PUBLISH_PASSWORD (or UV_PUBLISH_TOKEN) for uv,
TWINE_USERNAME / TWINE_PASSWORD for twine. A credential key in the file is an error.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Table, read_toml
from ..errors import ConfigError, IndexPublishError
from ..log import Reporter
from ..runner import run

CONFIG_SCHEMA_VERSION = 1
TOOLS = ("uv", "twine")
_CREDENTIAL_KEYS = ("username", "user", "password", "token", "api_token", "credentials")
_ENV = {"uv": ("UV_PUBLISH_USERNAME", "UV_PUBLISH_PASSWORD", "UV_PUBLISH_TOKEN"),
        "twine": ("TWINE_USERNAME", "TWINE_PASSWORD")}


@dataclass(frozen=True, kw_only=True)
class UploadConfig:
    url: str
    tool: str = "uv"
    check_url: str | None = None


def load_upload_config(path: Path) -> UploadConfig:
    raw = read_toml(path, missing="index config not found",
                    fix="create it with an [upload] table (docs/wheel-index.md), or "
                        "pass --index-config FILE")
    # Credentials are refused before anything else: the stack's unknown-key check would
    # also stop at them, but with a "did you mean" instead of the reason.
    _reject_credentials(raw, path, "the top level")
    top = Table(raw, "", path, what="index upload settings", doc="docs/wheel-index.md")
    schema = top.get("schema_version", int, CONFIG_SCHEMA_VERSION)
    upload = top.get("upload", dict)
    top.finish()
    if schema != CONFIG_SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema_version must be {CONFIG_SCHEMA_VERSION}")
    if upload is None:
        raise ConfigError(f"{path}: no [upload] table", fix='add [upload] url = "..."')
    _reject_credentials(upload, path, "[upload]")
    table = Table(upload, "upload", path, what="index upload settings",
                  doc="docs/wheel-index.md")
    # Types are checked below with messages that say what a valid value looks like.
    url = table.get("url", object)
    tool = table.get("tool", object, "uv")
    check_url = table.get("check_url", object)
    table.finish()
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: [upload] url must be an http(s) URL, got {url!r}")
    if tool not in TOOLS:
        raise ConfigError(f"{path}: [upload] tool must be one of {TOOLS}, got {tool!r}")
    if check_url is not None and not isinstance(check_url, str):
        raise ConfigError(f"{path}: [upload] check_url must be a string")
    for key, value in (("url", url), ("check_url", check_url)):
        parts = urllib.parse.urlsplit(value or "")
        if parts.username is not None or parts.password is not None:
            # Never echo the URL itself: the secret is in it.
            raise ConfigError(
                f"{path}: [upload] {key} holds credentials (user:password@ in the URL)",
                why="credentials never go into files in the repository, and the URL is "
                    "printed and logged",
                fix=f"remove them from the URL and set {' / '.join(_ENV[tool])} in the "
                    "environment")
    return UploadConfig(url=url, tool=tool, check_url=check_url)


def _reject_credentials(table: dict[str, object], path: Path, where: str) -> None:
    for key in sorted(table):
        if key.lower() in _CREDENTIAL_KEYS:
            raise ConfigError(
                f"{path}: {where} has a credential ({key!r})",
                why="credentials never go into files in the repository",
                fix="remove it and set UV_PUBLISH_USERNAME/UV_PUBLISH_PASSWORD (uv) or "
                    "TWINE_USERNAME/TWINE_PASSWORD (twine) in the environment")


def _uv() -> str:
    found = shutil.which("uv")
    if found:
        return found
    try:  # the `uv` wheel from PyPI ships the binary inside the package
        from uv import find_uv_bin  # type: ignore[import-not-found,unused-ignore]

        return str(find_uv_bin())
    except ImportError:
        return "uv"  # run() reports it as not found, with what it was needed for


def upload_command(config: UploadConfig, files: Sequence[Path]) -> list[str]:
    if config.tool == "uv":
        # Trusted publishing is PyPI's OIDC flow; for an internal index it only adds a
        # confusing second error when the credentials are wrong.
        cmd = [_uv(), "publish", "--trusted-publishing", "never", "--publish-url", config.url]
        if config.check_url:
            cmd += ["--check-url", config.check_url]
        return cmd + [str(f) for f in files]
    return [sys.executable, "-m", "twine", "upload", "--non-interactive", "--skip-existing",
            "--repository-url", config.url, *[str(f) for f in files]]


def upload(config: UploadConfig, files: Sequence[Path], reporter: Reporter) -> None:
    """Upload files. Credentials are inherited from the environment, never passed on the
    command line or through run()'s logged env changes."""
    present = [name for name in _ENV[config.tool] if os.environ.get(name)]
    reporter.say(f"uploading {len(files)} file(s) to {config.url} with {config.tool} "
                 f"(credentials from the environment: {', '.join(present) or 'none set'})")
    run(upload_command(config, files), reporter=reporter, error_cls=IndexPublishError,
        what=f"upload to {config.url}", echo=True,
        fix=f"check the URL and the credentials ({' / '.join(_ENV[config.tool])}); the "
            "local index is already updated, so re-running only repeats the upload")
