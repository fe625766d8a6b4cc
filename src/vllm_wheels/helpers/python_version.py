"""Runs with any interpreter the toolchain considers: prints its `major.minor` (e.g. 3.12).
Used by toolchain.python_version. Stdlib only, any CPython 3."""

import sys

if __name__ == "__main__":
    print("%d.%d" % sys.version_info[:2])  # noqa: UP031 - runs on older Pythons too
