"""A step of the FlashInfer build, run by the build venv's Python:
`python set_flashinfer_version.py TREE VERSION` writes VERSION as `__version__` into
TREE/flashinfer/_build_meta.py (the version the wheel is built as, with the stack's
local label) and prints `version: VERSION`. Exits non-zero naming the file when it has no
`__version__` line to replace (and VERSION is not already in it). Stdlib only."""

import pathlib
import re
import sys


def main(tree: str, version: str) -> int:
    meta = pathlib.Path(tree) / "flashinfer" / "_build_meta.py"
    text = meta.read_text()
    new = re.sub(r'^__version__ = ".*"$', f'__version__ = "{version}"', text, flags=re.MULTILINE)
    if new == text and version not in text:
        sys.exit("cannot find __version__ in " + str(meta))
    meta.write_text(new)
    print("version:", version)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
