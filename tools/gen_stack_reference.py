"""Write docs/stack-reference.md from the stack schema (src/vllm_wheels/build/stack.py).

    python tools/gen_stack_reference.py           # rewrite the file
    python tools/gen_stack_reference.py --check   # exit 1 when the file differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vllm_wheels.build.stack import REFERENCE_DOC, render_reference

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare instead of writing; exit 1 when they differ")
    args = parser.parse_args(argv)
    target = ROOT / REFERENCE_DOC
    text = render_reference()
    if args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            print(f"{REFERENCE_DOC} is not the one the schema generates: run "
                  "`python tools/gen_stack_reference.py`", file=sys.stderr)
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {REFERENCE_DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
