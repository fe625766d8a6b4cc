"""Adding wheels to the index: the verify_abi gate, immutable filenames, mirroring
companion wheels (e.g. the exact torch CUDA build) with their pinned hashes, and the
atomic switch to a new generation under the writers' lock (store.IndexDir.commit).

Everything is checked before anything is written: one refused wheel refuses the batch.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from ..build.sources import download, sha256_file
from ..build.wheelmeta import verify_record
from ..cache import remove
from ..errors import CannotCheckError, ConfigError, IndexPublishError, SourceError
from ..log import Reporter
from ..verify.report import REPORT_FILENAME, read_results
from . import layout
from .store import (
    FileRecord,
    IndexDir,
    IndexState,
    Origin,
    Verification,
    place_file,
    utc_now,
    write_bytes_atomic,
)


@dataclass(frozen=True)
class WheelToAdd:
    """A wheel about to enter the index, with how it earned its place."""

    path: Path
    facts: layout.WheelFacts
    sha256: str
    size: int
    origin: Origin
    verification: Verification
    verification_detail: str


@dataclass(frozen=True)
class PublishResult:
    added: tuple[str, ...]
    unchanged: tuple[str, ...]
    generation: int


def collect_wheels(paths: Sequence[Path]) -> list[Path]:
    """The wheels named on the command line: files as given, directories' *.whl."""
    wheels: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.glob("*.whl") if not p.name.startswith("."))
            if not found:
                raise ConfigError(f"no wheels in {path}",
                                  fix="build first (`nox -s build_wheels`) or pass --wheels "
                                      "DIR_OR_FILES")
            wheels.extend(found)
        elif path.is_file():
            wheels.append(path)
        else:
            raise ConfigError(f"{path} does not exist", fix="pass --wheels DIR_OR_FILES")
    names = [w.name for w in wheels]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"the same wheel name is given twice: {', '.join(dupes)}")
    return wheels


def verification_of(wheels: Sequence[Path], shas: dict[Path, str], *, report: Path | None,
                    allow_unverified: str | None, reporter: Reporter
                    ) -> dict[Path, tuple[Verification, str]]:
    """(verification, detail) per wheel, or IndexPublishError when a wheel has no passing
    verify_abi result for its exact sha256 and no --allow-unverified reason was given."""
    if allow_unverified is not None and not allow_unverified.strip():
        raise ConfigError("--allow-unverified needs a reason",
                          why="the reason is recorded in the index for whoever installs it",
                          fix='e.g. --allow-unverified "no GPU host to verify on; smoke-'
                              'tested by hand on gpu-7"')
    reports: dict[Path, dict[str, dict[str, Any]] | str] = {}
    result: dict[Path, tuple[Verification, str]] = {}
    problems: list[str] = []
    for wheel in wheels:
        report_path = (report or wheel.parent / REPORT_FILENAME).resolve()
        if report_path not in reports:
            try:
                reports[report_path] = read_results(report_path)
            except CannotCheckError as exc:
                reports[report_path] = exc.what
        results = reports[report_path]
        sha = shas[wheel]
        if isinstance(results, str):
            problems.append(f"{wheel.name}: {results}")
            continue
        # Looked up by the file's sha256: a result for other bytes never counts, and one
        # for these bytes under another name does not either (the name carries the tags
        # installers select by).
        entry = results.get(sha)
        if entry is not None and entry["passed"] and entry["filename"] == wheel.name:
            result[wheel] = (Verification.VERIFY_ABI,
                             f"{report_path.name} sha256:{sha256_file(report_path)}")
            continue
        same_name = [s for s, r in results.items() if r["filename"] == wheel.name
                     and r["passed"]]
        if entry is not None and entry["filename"] == wheel.name:
            problems.append(f"{wheel.name}: no passing result for it in {report_path} (its "
                            f"latest result there is {entry['status']}"
                            f"{_against(entry)})")
        elif same_name:
            problems.append(f"{wheel.name}: {report_path} passed a different file under this "
                            f"name (sha256 {same_name[0][:12]}..., this file {sha[:12]}...)")
        else:
            problems.append(f"{wheel.name}: no passing result for it in {report_path}")
    if problems and allow_unverified is None:
        raise IndexPublishError(
            f"{len(problems)} wheel(s) have no passing verify_abi result:\n"
            + "\n".join("    " + p for p in problems),
            why="only wheels that passed verify_abi (for their exact sha256) are published, "
                "so no host installs a wheel that would fail at import",
            fix="run `nox -s verify_abi -- --wheels DIR` on a host with the runtime "
                "environment, or pass --allow-unverified REASON (recorded in the index)")
    for wheel in wheels:
        if wheel not in result:
            assert allow_unverified is not None
            reporter.warn(f"publishing {wheel.name} unverified: {allow_unverified}")
            result[wheel] = (Verification.UNVERIFIED, allow_unverified.strip())
    return result


def _against(entry: dict[str, Any]) -> str:
    """' against PYTHON with torch X' from a result's runtime facts, when it has them."""
    runtime = entry.get("runtime")
    if not isinstance(runtime, dict) or "python" not in runtime:
        return ""
    torch = runtime.get("torch")
    version = torch.get("version") if isinstance(torch, dict) else None
    return f" against {runtime['python']}" + (f" with torch {version}" if version else
                                              " without torch")


def check_records(wheels: Sequence[Path]) -> None:
    """IndexPublishError (exit 10) naming every wheel whose members do not match its
    RECORD (wheelmeta.verify_record), before anything is written: a verify_abi pass is
    for the wheel as built, and a member changed since (or a RECORD edited) is not that."""
    bad = {w: verify_record(w) for w in wheels}
    bad = {w: problems for w, problems in bad.items() if problems}
    if bad:
        raise IndexPublishError(
            f"{len(bad)} wheel(s) do not match their RECORD:\n"
            + "\n".join(f"    {w.name}: {'; '.join(problems[:5])}"
                        + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
                        for w, problems in bad.items()),
            why="pip does not check RECORD when it installs: the index must not serve files "
                "other than the ones that were built and verified",
            fix="rebuild the wheel and run verify_abi on it again; never edit a wheel by hand")


def built_wheels_to_add(wheels: Sequence[Path], *, report: Path | None,
                        allow_unverified: str | None, reporter: Reporter) -> list[WheelToAdd]:
    # Even with --allow-unverified: that waives verify_abi, not the wheel's integrity.
    check_records(wheels)
    facts = {w: layout.inspect_wheel(w) for w in wheels}
    shas = {w: sha256_file(w) for w in wheels}
    verdicts = verification_of(wheels, shas, report=report, allow_unverified=allow_unverified,
                               reporter=reporter)
    return [WheelToAdd(path=w, facts=facts[w], sha256=shas[w], size=w.stat().st_size,
                       origin=Origin.BUILT, verification=verdicts[w][0],
                       verification_detail=verdicts[w][1]) for w in wheels]


def add_to_index(index: IndexDir, wheels: Sequence[WheelToAdd], reporter: Reporter
                 ) -> PublishResult:
    """Add the wheels in one generation. Identical files already there are skipped;
    a different file under a name already there refuses the whole batch."""
    return add_to_roots([(index, wheels)], reporter)[0]


@dataclass(frozen=True)
class _Batch:
    """One root's part of a publish, checked under its lock: the state it starts from,
    the wheels to place, the names already there with the same bytes and those already
    there with other bytes (conflicts)."""

    index: IndexDir
    state: IndexState
    new: list[WheelToAdd]
    unchanged: list[str]
    conflicts: list[str]


def add_to_roots(batches: Sequence[tuple[IndexDir, Sequence[WheelToAdd]]],
                 reporter: Reporter) -> list[PublishResult]:
    """Add each batch of wheels to its own index root (one per GPU target,
    docs/wheel-index.md), each root in one generation, as add_to_index does for one.
    Every root is checked before any changes: the locks of all of them are held (taken in
    path order, so two such publishes never wait on each other in a cycle), and a conflict
    in any root refuses them all. Then the roots switch one after the other, each switch
    atomic: a reader of any root sees its old index or its new one."""
    roots = [index.root for index, _ in batches]
    if len(set(roots)) != len(roots):
        raise ConfigError("the same index root is given twice in one publish",
                          fix="give each target its own root (<index>/<target>/)")
    with contextlib.ExitStack() as locks:
        for index in sorted((index for index, _ in batches), key=lambda i: str(i.root)):
            locks.enter_context(index.lock(reporter))
        checked = [_check_batch(index, wheels, reporter, name_root=len(batches) > 1)
                   for index, wheels in batches]
        conflicts = [c for batch in checked for c in batch.conflicts]
        if conflicts:
            raise IndexPublishError(
                "a different file is already published under the same name:\n"
                + "\n".join("    " + c for c in conflicts),
                why="filenames are immutable: hosts, lock files and --require-hashes pin the "
                    "sha256 of what they installed",
                fix="give the rebuild a new version or local label (the stack's `label`), or "
                    "yank the old file (`nox -s index_yank -- FILE --reason TEXT`) and "
                    "publish under a new name")
        return [_commit_batch(batch, reporter) for batch in checked]


def _check_batch(index: IndexDir, wheels: Sequence[WheelToAdd], reporter: Reporter, *,
                 name_root: bool) -> _Batch:
    """The root's state (leftovers of an interrupted writer removed; call with its lock
    held) and what each wheel is there: new, unchanged, or a conflict (naming the root
    when the publish has several)."""
    state = index.load()
    index.clean_leftovers(state, reporter)
    batch = _Batch(index, state, [], [], [])
    where = f" root {index.root.name}/" if name_root else ""
    for c in wheels:
        existing = state.files.get(c.path.name)
        if existing is None:
            batch.new.append(c)
        elif existing.sha256 == c.sha256:
            batch.unchanged.append(c.path.name)
        else:
            batch.conflicts.append(f"{c.path.name}: in the index{where} with sha256 "
                                   f"{existing.sha256[:12]}..., this file {c.sha256[:12]}...")
    return batch


def _commit_batch(batch: _Batch, reporter: Reporter) -> PublishResult:
    """Place the batch's new files and switch its root to a generation listing them (call
    with the root's lock held, after every root of the publish was checked)."""
    index, state, new = batch.index, batch.state, batch.new
    for name in batch.unchanged:
        reporter.say(f"unchanged: {name} (identical file already published)")
    if not new:
        return PublishResult((), tuple(batch.unchanged), state.generation)
    now = utc_now()
    records = dict(state.files)
    try:
        for c in new:
            project = c.facts.project
            place_file(c.path, index.file_path(project, c.path.name), c.sha256)
            write_bytes_atomic(index.metadata_path(project, c.path.name), c.facts.metadata)
            records[c.path.name] = FileRecord(
                filename=c.path.name, project=project, version=c.facts.version,
                sha256=c.sha256, size=c.size, upload_time=now, origin=c.origin,
                verification=c.verification, verification_detail=c.verification_detail,
                history=({"action": "publish", "at": now,
                          "reason": c.verification_detail},))
            reporter.say(f"added: {c.path.name} ({c.size / 1e6:.1f} MB, sha256 "
                         f"{c.sha256}, {c.verification})")
        committed = index.commit(IndexState(state.generation, records), reporter)
    except BaseException:
        # Not switched in: the files just placed are listed nowhere; take them back
        # (a SIGKILL skips this, and the next writer's clean_leftovers does it).
        listed = index.load().files if index.current.is_symlink() else {}
        for c in new:
            if c.path.name not in listed:
                remove(index.file_path(c.facts.project, c.path.name))
                remove(index.metadata_path(c.facts.project, c.path.name))
        raise
    return PublishResult(tuple(c.path.name for c in new), tuple(batch.unchanged),
                         committed.generation)


def regenerate(index: IndexDir, reporter: Reporter, *, check_hashes: bool = False) -> int:
    """Rewrite every page from the files and the state (e.g. after upgrading the tool)."""
    with index.lock(reporter):
        state = index.require()
        if check_hashes:
            missing = [r.filename for r in state.files.values()
                       if not index.file_path(r.project, r.filename).is_file()]
            if missing:
                raise IndexPublishError(f"files listed in the index are missing on disk: "
                                        f"{missing}",
                                        why="the pages link them; installers would get 404",
                                        fix=f"restore them into {index.files}/<project>/ from a "
                                            "backup, or yank them")
            bad = [r.filename for r in state.files.values()
                   if sha256_file(index.file_path(r.project, r.filename)) != r.sha256]
            if bad:
                raise IndexPublishError(f"files changed on disk since publishing: {bad}",
                                        why="the pages and every host's pins use the "
                                            "recorded sha256",
                                        fix="restore the original files from a backup")
        return index.commit(state, reporter).generation


# ----------------------------------------------------------------------------- mirror


def _split_source(source: str) -> tuple[str, str | None]:
    """'URL#sha256=HEX' -> (URL, HEX)."""
    url, _, fragment = source.partition("#")
    if fragment.startswith("sha256="):
        return url, fragment.split("=", 1)[1].lower()
    return url, None


def mirrored_wheels_to_add(sources: Sequence[str], sha256s: Sequence[str], incoming: Path,
                           reporter: Reporter) -> list[WheelToAdd]:
    """Fetch companion wheels (URL or local path) into `incoming` and check each against
    its pinned sha256: from a `#sha256=` fragment (as index pages link them) or --sha256
    in the same order."""
    if sha256s and len(sha256s) != len(sources):
        raise ConfigError(f"{len(sha256s)} --sha256 value(s) for {len(sources)} source(s)",
                          fix="give one --sha256 per source, in order, or none and put "
                              "#sha256=HEX on each URL")
    planned: list[tuple[str, str, str | None]] = []  # (location, sha256, URL's filename)
    for i, source in enumerate(sources):
        location, from_fragment = _split_source(source)
        expected = sha256s[i].lower() if sha256s else from_fragment
        if expected is None:
            raise IndexPublishError(
                f"no sha256 pinned for {location}",
                why="a mirrored wheel is trusted because of its pinned hash, nothing else",
                fix="append #sha256=HEX as the source index's link shows it, or pass --sha256")
        if from_fragment and expected != from_fragment:
            raise ConfigError(f"{location}: --sha256 and the URL's #sha256 disagree")
        parsed = urllib.parse.urlsplit(location)
        remote = parsed.scheme in ("http", "https", "file")
        # Decode first, then take the last segment: an encoded '/' (%2F) must not survive
        # into a name that is joined to the download folder.
        planned.append((location, expected,
                        _url_filename(location, parsed.path) if remote else None))
    to_add = []
    for location, expected, filename in planned:
        if filename is not None:
            dest = incoming / filename
            try:
                download(location, dest, expected, reporter)
            except SourceError as exc:
                raise IndexPublishError(f"mirroring {filename}: {exc.what}", why=exc.why,
                                        fix=exc.fix) from None
        else:
            dest = Path(location)
            if not dest.is_file():
                raise ConfigError(f"{location} is neither an http(s) URL nor a file")
            actual = sha256_file(dest)
            if actual != expected:
                raise IndexPublishError(f"sha256 mismatch for {dest}\n  expected: {expected}\n"
                                        f"  actual:   {actual}",
                                        why="a mirrored wheel must be exactly the pinned one")
        facts = layout.inspect_wheel(dest)
        to_add.append(WheelToAdd(path=dest, facts=facts, sha256=expected,
                                 size=dest.stat().st_size, origin=Origin.MIRROR,
                                 verification=Verification.MIRROR_HASH,
                                 verification_detail=location))
    return to_add


def _url_filename(location: str, url_path: str) -> str:
    """The wheel filename a URL names; IndexPublishError before anything is downloaded
    when it is not a plain wheel filename (an encoded ../ could escape the download
    folder and overwrite or delete a file outside it)."""
    filename = Path(urllib.parse.unquote(url_path)).name
    problem = ""
    if not filename or filename.startswith(".") or "/" in filename or "\\" in filename \
            or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in filename):
        problem = "it is empty, hidden or holds path or control characters"
    else:
        try:
            parse_wheel_filename(filename)
        except InvalidWheelFilename as exc:
            problem = str(exc)
    if problem:
        raise IndexPublishError(f"{location} does not name a wheel file ({filename!r}): "
                                f"{problem}",
                                why="the index mirrors wheels only, downloaded under the name "
                                    "the URL ends with",
                                fix="pass the wheel's own link, as the source index's page "
                                    "shows it (.../NAME-VERSION-TAGS.whl#sha256=HEX)")
    return filename


def mirror(index: IndexDir, sources: Sequence[str], sha256s: Sequence[str],
           reporter: Reporter) -> PublishResult:
    incoming = index.root / f".incoming-{os.getpid()}"
    try:
        incoming.mkdir(parents=True, exist_ok=True)
        return add_to_index(index, mirrored_wheels_to_add(sources, sha256s, incoming, reporter),
                            reporter)
    finally:
        remove(incoming)


def suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else "see `nox -s index_list`"
