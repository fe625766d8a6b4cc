"""Config files: the one way a TOML file of the project (stack, docker versions,
workloads, index upload settings) is read, and the typed table reader that rejects
unknown keys with a suggestion.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError


def read_toml(path: Path, *, missing: str, fix: str = "") -> dict[str, Any]:
    """The one way config files are read: a missing file, an unreadable one and bad TOML
    each become a ConfigError (exit 2) naming the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{missing}: {path}", fix=fix) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


class Table:
    """A TOML table that remembers which keys were read, to reject the rest: `get` a key
    (typed, with a default or required), `sub` a nested table, then `finish` raises a
    ConfigError (exit 2) for a key never read, with a "did you mean"."""

    def __init__(self, data: Mapping[str, Any], where: str, file: Path, *,
                 what: str = "stack", doc: str = "docs/stack-reference.md") -> None:
        """`what` names the file's kind in messages (e.g. "workload 'single-stream'") and
        `doc` the page that documents its keys: a workload's missing key must not send
        its author to the stack reference."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{file}: [{where}] must be a table, got {type(data).__name__}")
        self.data = dict(data)
        self.where = where
        self.file = file
        self.what = what
        self.doc = doc
        self.known: set[str] = set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *,
            required: bool = False) -> Any:
        self.known.add(key)
        if key not in self.data:
            if required:
                raise self._missing(key)
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ConfigError(f"{self.file}: [{self.where}] {key} must be {names}, "
                              f"got {value!r}")
        return value

    def _missing(self, key: str) -> ConfigError:
        where = f"[{self.where}]" if self.where else "the top level"
        # A required key is usually "missing" because it is misspelt: the misspelt key is
        # then among the ones not read yet, and naming it is the whole fix.
        unread = sorted(k for k in self.data if k not in self.known)
        close = difflib.get_close_matches(key, unread, n=1, cutoff=0.6)
        if close:
            return ConfigError(f"{self.file}: missing key '{key}' in {where}",
                               why=f"'{close[0]}' is there instead; no key of that name is read",
                               fix=f"did you mean '{key}'? rename '{close[0]}' to '{key}'")
        why = ("it has no default: the build cannot be pinned without it" if self.what == "stack"
               else f"it has no default: the {self.what} cannot be used without it")
        return ConfigError(f"{self.file}: missing key '{key}' in {where}"
                           + ("" if self.what == "stack" else f" of the {self.what}"),
                           why=why, fix=f"add {key} = ... to {where} (see {self.doc})")

    def sub(self, key: str, *, required: bool = False) -> Table:
        value = self.get(key, dict, default={}, required=required)
        return Table(value, f"{self.where}.{key}" if self.where else key, self.file,
                     what=self.what, doc=self.doc)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.known)
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, sorted(self.known), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else (
                "known keys: " + ", ".join(sorted(self.known)))
            where = f"[{self.where}]" if self.where else "the top level"
            raise ConfigError(f"{self.file}: unknown key '{key}' in {where}",
                              why="a typo would otherwise silently fall back to a default",
                              fix=hint)
