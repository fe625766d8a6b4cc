"""The index's state and how it changes: one JSON file per generation, a lock for writers,
and an atomic switch from one generation to the next.

The state (index-state.json, schema_version 1) holds only what the wheel files cannot
tell: when each file was published, how it got in (verify_abi pass, a recorded
--allow-unverified reason, or a mirror with its pinned hash), its yank status and
history. Everything else on the pages (requires-python, the metadata hash, size) is
read from the files, so `regenerate` rebuilds every page from files + state:

    {
      "schema_version": 1,
      "tool": "vllm-wheels index",
      "generation": 3,
      "files": [
        {"filename": "vllm-0.11.2+cu128.torch290.sm120-cp38-abi3-linux_x86_64.whl",
         "project": "vllm", "version": "0.11.2+cu128.torch290.sm120",
         "sha256": "<hex>", "size": 123, "upload_time": "2026-11-27T14:00:00.000000Z",
         "origin": "built" | "mirror",
         "verification": "verify-abi" | "unverified" | "mirror-hash",
         "verification_detail": "<report sha256 | the reason given | the source URL>",
         "yanked": null | "<reason>",
         "history": [{"action": "publish" | "yank" | "unyank", "at": "...", "reason": "..."}]}
      ]
    }
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..cache import pid_alive, raise_if_disk_full, remove, temp_sibling, write_atomic
from ..errors import ConfigError, IndexPublishError
from ..log import Reporter
from . import layout

STATE_SCHEMA_VERSION = 1
STATE_FILENAME = "index-state.json"


class Origin(StrEnum):
    """Where a file of the index came from."""

    BUILT = "built"  # our wheels, published
    MIRROR = "mirror"  # a companion wheel copied in by its pinned hash


class Verification(StrEnum):
    """What earned a file its place in the index."""

    VERIFY_ABI = "verify-abi"  # a passing verify_abi result for its sha256
    UNVERIFIED = "unverified"  # --allow-unverified, with the reason recorded
    MIRROR_HASH = "mirror-hash"  # the pinned sha256 of a mirrored file


ORIGINS = tuple(o.value for o in Origin)
VERIFICATIONS = tuple(v.value for v in Verification)
# Generations kept besides the current one, so a reader that resolved the previous
# one a moment ago can still finish reading it.
KEEP_OLD_GENERATIONS = 1
# Test hook: seconds to sleep after a new generation is fully written and before it is
# switched in, so tests can kill a publish at the worst moment or overlap two publishes.
PAUSE_ENV = "VLLM_WHEELS_INDEX_PAUSE_BEFORE_SWAP"


def utc_now() -> str:
    """PEP 700's upload-time format: yyyy-mm-ddThh:mm:ss.ffffffZ."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    filename: str
    project: str  # normalized name
    version: str
    sha256: str
    size: int
    upload_time: str
    origin: Origin
    verification: Verification
    verification_detail: str
    yanked: str | None = None  # the reason; None = not yanked
    history: tuple[Mapping[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["history"] = [dict(h) for h in self.history]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> FileRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted(k for k in known - set(data) if k not in ("yanked", "history"))
        if unknown or missing:
            raise ConfigError(f"{where}: file entry {data.get('filename')!r} has "
                              f"{'unknown keys ' + str(unknown) if unknown else ''}"
                              f"{'missing keys ' + str(missing) if missing else ''}",
                              why="the state file is what the pages are generated from",
                              fix="restore it from the previous generation in generations/")
        record = cls(**{**data, "history": tuple(dict(h) for h in data.get("history", ()))})
        if record.origin not in ORIGINS or record.verification not in VERIFICATIONS:
            raise ConfigError(f"{where}: {record.filename}: origin/verification "
                              f"{record.origin!r}/{record.verification!r} not one of "
                              f"{ORIGINS}/{VERIFICATIONS}")
        return dataclasses.replace(record, origin=Origin(record.origin),
                                   verification=Verification(record.verification))


@dataclass(frozen=True)
class IndexState:
    generation: int = 0
    files: Mapping[str, FileRecord] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "schema_version": STATE_SCHEMA_VERSION,
            "tool": "vllm-wheels index",
            "generation": self.generation,
            "files": [self.files[name].to_dict() for name in sorted(self.files)],
        }, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> IndexState:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where} is not valid JSON: {exc}",
                              fix="restore it from the previous generation in generations/"
                              ) from None
        if data.get("schema_version") != STATE_SCHEMA_VERSION:
            raise ConfigError(f"{where}: schema_version {data.get('schema_version')!r} is not "
                              f"{STATE_SCHEMA_VERSION}",
                              fix="use the version of vllm-wheels that wrote this index")
        unknown = sorted(set(data) - {"schema_version", "tool", "generation", "files"})
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}")
        files = {}
        for item in data.get("files", []):
            record = FileRecord.from_dict(item, where)
            files[record.filename] = record
        return cls(generation=int(data.get("generation", 0)), files=files)


_GENERATION = re.compile(r"^\d{6}$")


@dataclass(frozen=True)
class IndexDir:
    """The paths of one index directory."""

    root: Path

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def generations(self) -> Path:
        return self.root / "generations"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def simple(self) -> Path:
        return self.root / "simple"

    @property
    def state_path(self) -> Path:
        return self.current / STATE_FILENAME

    def file_path(self, project: str, filename: str) -> Path:
        return self.files / project / filename

    def metadata_path(self, project: str, filename: str) -> Path:
        return self.files / project / (filename + ".metadata")

    def exists(self) -> bool:
        return self.current.is_symlink() and self.state_path.is_file()

    def load(self) -> IndexState:
        """The current state (an empty index when nothing was published yet).

        A directory without the `current` symlink but with content is refused: it is a
        copy made with symlinks followed (rsync -L, cp -rL) or dropped (rsync without -l).
        Treating it as empty would make clean_leftovers delete every file in it."""
        if not self.current.is_symlink():
            if self.current.exists() or _holds_files(self.generations) \
                    or _holds_files(self.files):
                state = "is not a symlink" if self.current.exists() else "is missing"
                raise ConfigError(
                    f"{self.root} is not an index this tool can write: {self.current} {state}",
                    why="this is a copy made with symlinks followed (rsync -L, cp -rL) or "
                        "dropped; the index switches generations by replacing the `current` "
                        "symlink, and without it every published file would look unlisted",
                    fix=f"publish into the original index and copy it again afterwards; if "
                        f"{self.root} is the original and its very first publish was killed, "
                        f"nothing was published yet: remove {self.files} and "
                        f"{self.generations}")
            return IndexState()
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{self.current} points at a generation without "
                              f"{STATE_FILENAME}",
                              fix=f"point {self.current} at an intact directory in "
                                  f"{self.generations}") from None
        return IndexState.from_json(text, str(self.state_path))

    def require(self) -> IndexState:
        if not self.exists():
            raise ConfigError(f"no wheel index at {self.root}",
                              fix="publish wheels first (`nox -s publish`), or pass "
                                  "--index DIR")
        return self.load()

    @contextlib.contextmanager
    def lock(self, reporter: Reporter | None = None) -> Iterator[None]:
        """One writer at a time. flock is released by the kernel when the holder dies,
        so a killed publish never leaves the index locked."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if reporter is not None:
                    reporter.say(f"waiting for another writer of {self.root} to finish ...")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def clean_leftovers(self, state: IndexState, reporter: Reporter) -> None:
        """Remove what an interrupted writer left (call with the lock held): temporary
        generations, generations never switched in, and files that no state lists."""
        if not self.current.is_symlink():
            # Nothing was ever switched in (load() refuses a non-empty directory without
            # the link): there is no state to tell leftovers from published files.
            return
        current_gen = self.current.readlink().name
        if self.generations.is_dir():
            for entry in self.generations.iterdir():
                if not _GENERATION.match(entry.name) or entry.name > current_gen:
                    reporter.log(f"removing leftover generation {entry}")
                    remove(entry)
        for incoming in self.root.glob(".incoming-*"):
            # A mirror downloads before taking the lock: only a dead process's folder goes.
            pid = incoming.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                remove(incoming)
        listed = {(r.project, r.filename) for r in state.files.values()}
        if self.files.is_dir():
            for project_dir in self.files.iterdir():
                if project_dir.is_symlink() or not project_dir.is_dir():
                    # Not something a publish writes (files/<project>/<file>): leave it.
                    reporter.log(f"ignoring {project_dir}: not a project directory")
                    continue
                for entry in project_dir.iterdir():
                    wheel = entry.name.removesuffix(".metadata")
                    if (project_dir.name, wheel) not in listed:
                        reporter.say(f"removing {entry.name}: left by an interrupted publish, "
                                     "never listed")
                        remove(entry)
                if not any(project_dir.iterdir()):
                    project_dir.rmdir()

    def commit(self, state: IndexState, reporter: Reporter) -> IndexState:
        """Write `state` and its pages as the next generation and switch to it (call with
        the lock held, after every file it lists is in place)."""
        existing = [int(p.name) for p in self.generations.glob("*") if _GENERATION.match(p.name)]
        number = max([state.generation, *existing]) + 1
        new_state = IndexState(generation=number, files=dict(state.files))
        final = self.generations / f"{number:06d}"
        tmp = temp_sibling(final)
        remove(tmp)
        try:
            tmp.mkdir(parents=True)
            layout.write_pages(tmp / "simple", self, new_state.files.values())
            (tmp / STATE_FILENAME).write_text(new_state.to_json(), encoding="utf-8")
            tmp.rename(final)
            pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
            if pause > 0:
                reporter.say(f"(test hook) generation {number} written; pausing {pause:g}s "
                             "before switching to it")
                time.sleep(pause)
            _replace_symlink(self.current, Path("generations") / final.name)
        except BaseException:
            # The switch is the commit point: before it, the new generation is garbage.
            switched = self.current.is_symlink() and \
                self.current.readlink() == Path("generations") / final.name
            if not switched:
                remove(tmp)
                remove(final)
            raise
        for link, target in ((self.simple, Path("current") / "simple"),
                             (self.root / STATE_FILENAME, Path("current") / STATE_FILENAME)):
            if not link.is_symlink():
                _replace_symlink(link, target)
        self._prune(final.name)
        return new_state

    def _prune(self, current_name: str) -> None:
        old = sorted(p.name for p in self.generations.iterdir()
                     if _GENERATION.match(p.name) and p.name < current_name)
        for name in old[:max(0, len(old) - KEEP_OLD_GENERATIONS)]:
            remove(self.generations / name)


def _holds_files(directory: Path) -> bool:
    """Anything but empty folders (a failed first publish leaves files/<project>/)."""
    return directory.is_dir() and any(not p.is_dir() or p.is_symlink()
                                      for p in directory.rglob("*"))


def _replace_symlink(link: Path, target: Path) -> None:
    """Point `link` at `target` atomically (rename(2) over the old link)."""
    if link.exists() and not link.is_symlink():
        raise IndexPublishError(f"{link} exists and is not a symlink",
                                why="the index switches generations by replacing this link",
                                fix=f"move {link} away (was something copied here by hand?)")
    tmp = temp_sibling(link)
    remove(tmp)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def place_file(source: Path, dest: Path, expected_sha256: str) -> None:
    """Copy a file into the index under a temporary name, fsync it, then rename it.

    The copy is hashed as it is written: the wheel was checked (verify report, pinned
    hash) before the lock was taken, and the bytes placed must be the bytes checked."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(dest)
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, tmp.open("wb") as out:
            while chunk := src.read(1 << 22):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected_sha256:
            raise IndexPublishError(
                f"{source} changed while publishing: it was checked with sha256 "
                f"{expected_sha256}, the copy has {digest.hexdigest()}",
                why="the index records the sha256 that passed verification; it must be the "
                    "sha256 of the bytes served",
                fix="let whatever writes the wheel finish, then publish again")
        tmp.replace(dest)
    except BaseException as exc:
        remove(tmp)
        raise_if_disk_full(exc, dest, why=_DISK_FULL_WHY, fix=_disk_full_fix(dest))
        raise


_DISK_FULL_WHY = "the partial file was removed; the index is unchanged"


def _disk_full_fix(dest: Path) -> str:
    return f"free space on the filesystem of {dest.parent}, then publish again"


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    write_atomic(dest, data, disk_full_why=_DISK_FULL_WHY, disk_full_fix=_disk_full_fix(dest))
