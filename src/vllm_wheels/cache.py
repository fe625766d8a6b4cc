"""The content-addressed cache: downloads by sha256, prepared source trees by a key of
everything that shapes them, external sources by name and ref, build venvs by their pins.

Every entry is written to a temporary sibling and renamed into place, so an interrupted
run never leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DiskFullError


def default_cache_root() -> Path:
    env = os.environ.get("VLLM_WHEELS_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base) / "vllm-wheels").resolve()


@dataclass(frozen=True)
class Cache:
    root: Path

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def sources(self) -> Path:
        return self.root / "src"

    @property
    def externals(self) -> Path:
        return self.root / "externals"

    @property
    def venvs(self) -> Path:
        return self.root / "venvs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def download_path(self, sha256: str, filename: str) -> Path:
        return self.downloads / "sha256" / sha256[:2] / sha256 / filename

    def compile_cache_dir(self, tool: str) -> Path:
        return self.root / tool

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock so two builds do not fill the same entry at once."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with (lock_dir / f"{name}.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether a process exists (for temporary names carrying their writer's pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def raise_if_disk_full(exc: BaseException, dest: Path, *,
                       why: str = "the partial file was removed", fix: str = "") -> None:
    """Turn ENOSPC into DiskFullError (exit 7); any other exception is left to the caller."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        raise DiskFullError(f"disk full while writing {dest}", why=why,
                            fix=fix or f"free space on the filesystem of {dest.parent}, "
                                       "then run the command again") from None


def write_atomic(dest: Path, data: bytes | str, *,
                 disk_full_why: str = "the partial file was removed; the old one is intact",
                 disk_full_fix: str = "") -> None:
    """Write to a temporary sibling, then rename over `dest`: readers see the old file or
    the new one, never a part. The temporary file is removed on any failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(dest)
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, dest)
    except BaseException as exc:
        remove(tmp)
        raise_if_disk_full(exc, dest, why=disk_full_why, fix=disk_full_fix)
        raise


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def publish_dir(tmp: Path, final: Path) -> None:
    """Atomically move a finished directory into place (replacing an older one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        remove(old)
    else:
        tmp.rename(final)
