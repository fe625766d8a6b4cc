"""PEP 592 yank and un-yank. A yanked file stays in the index (hosts that pinned it with
`==` still install it) but installers skip it for ranges like `>=1.0`. The reason is
shown by pip and uv, and every change is kept in the file's history in the state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..errors import ConfigError, IndexPublishError
from ..log import Reporter
from .publish import suggest
from .store import FileRecord, IndexDir, IndexState, utc_now


def select(state: IndexState, targets: Sequence[str]) -> list[FileRecord]:
    """Files named by filename (a path's basename counts) or by PROJECT==VERSION."""
    chosen: dict[str, FileRecord] = {}
    for target in targets:
        if "==" in target and not target.endswith(".whl"):
            project, _, version = target.partition("==")
            try:
                wanted = Version(version.strip())
            except InvalidVersion:
                raise ConfigError(f"{target!r}: '{version}' is not a version") from None
            matches = [r for r in state.files.values()
                       if r.project == canonicalize_name(project.strip())
                       and Version(r.version) == wanted]
            if not matches:
                raise IndexPublishError(f"no file of {project} {version} in the index",
                                        fix="see `nox -s index_list`")
            chosen.update({r.filename: r for r in matches})
            continue
        name = target.rsplit("/", 1)[-1]
        record = state.files.get(name)
        if record is None:
            raise IndexPublishError(f"{name} is not in the index",
                                    fix=suggest(name, state.files))
        chosen[name] = record
    return list(chosen.values())


def set_yanked(index: IndexDir, targets: Sequence[str], reason: str | None,
               reporter: Reporter) -> list[str]:
    """Yank (reason given) or un-yank (reason None) the targets; returns the files that
    changed. Nothing changes (and no generation is written) when all are already so."""
    if reason is not None and not reason.strip():
        raise ConfigError("--reason must not be empty",
                          why="installers show it to whoever still resolves to this file")
    # Before the lock, which creates the directory and its .lock file: a folder that is no
    # index is left exactly as it was.
    index.require()
    with index.lock(reporter):
        state = index.require()
        records = dict(state.files)
        changed = []
        now = utc_now()
        for record in select(state, targets):
            new_value = reason.strip() if reason is not None else None
            if record.yanked == new_value:
                reporter.say(f"unchanged: {record.filename} "
                             f"({'yanked' if new_value is not None else 'not yanked'})")
                continue
            event = {"action": "yank" if new_value is not None else "unyank", "at": now,
                     "reason": new_value or ""}
            records[record.filename] = replace(record, yanked=new_value,
                                               history=(*record.history, event))
            changed.append(record.filename)
            reporter.say(f"{event['action']}: {record.filename}"
                         + (f" ({new_value})" if new_value else ""))
        if changed:
            index.commit(IndexState(state.generation, records), reporter)
        return changed
