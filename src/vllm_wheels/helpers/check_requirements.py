"""Runs inside a build venv: which of the requirements given as arguments are not met by
what is installed there. Arguments after `--constraints` are constraints, as pip reads
them: met unless the package is installed at another version. Prints a JSON list of
{"requirement", "found"} for the unmet ones. Used for a venv the user brings
(--build-venv), which the pipeline does not install into.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import sys


def main(argv: list[str]) -> int:
    try:
        from packaging.requirements import Requirement
    except ImportError:
        print(json.dumps([{"requirement": "packaging", "found": None}]))
        return 0
    unmet = []
    split = argv.index("--constraints") if "--constraints" in argv else len(argv)
    for index, text in enumerate(argv):
        if index == split:
            continue
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            found: str | None = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            found = None
        if found is None and index > split:
            continue  # a constraint binds only what is installed
        if found is None or not req.specifier.contains(found, prereleases=True):
            unmet.append({"requirement": text, "found": found})
    print(json.dumps(unmet))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
