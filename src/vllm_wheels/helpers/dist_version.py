"""Runs inside a build venv: `python dist_version.py DIST` prints the installed version of
the distribution DIST, or an empty line when it is not installed. Stdlib only."""

import importlib.metadata as metadata
import sys

if __name__ == "__main__":
    try:
        print(metadata.version(sys.argv[1]))
    except metadata.PackageNotFoundError:
        print("")
