"""The documentation is part of the repository: the stack reference is the one the schema
generates, every relative link in README.md and docs/ resolves, and no file cites notes
that live outside the repository (facts the code relies on are in docs/facts/)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from vllm_wheels.build.stack import REFERENCE_DOC, render_reference

# Built from parts so that this file does not match itself.
OUTSIDE_NOTES = "shared" + "/reference"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked_files(repo_root: Path) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=repo_root, capture_output=True,
                            check=True).stdout.decode()
    return [repo_root / name for name in listed.split("\0") if name]


def test_stack_reference_is_generated_from_the_schema(repo_root: Path) -> None:
    committed = (repo_root / REFERENCE_DOC).read_text(encoding="utf-8")
    assert committed == render_reference(), (
        f"{REFERENCE_DOC} differs from the schema: run `python tools/gen_stack_reference.py`")


def test_nothing_cites_notes_outside_the_repository(repo_root: Path) -> None:
    citing = []
    for path in tracked_files(repo_root):
        if not path.is_file() or path.suffix not in {".py", ".md", ".toml", ".txt", ".cfg",
                                                      ".sh", ".json", ".patch", ""}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if OUTSIDE_NOTES in text:
            citing.append(str(path.relative_to(repo_root)))
    assert not citing, f"cite docs/facts/ instead of {OUTSIDE_NOTES}: {citing}"


def test_relative_links_in_the_docs_resolve(repo_root: Path) -> None:
    pages = [repo_root / "README.md", *sorted((repo_root / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(repo_root)} -> {target}")
    assert not broken, broken


def test_readme_links_every_doc(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    for page in sorted((repo_root / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


def test_the_unit_tier_needs_no_redis_server(repo_root: Path) -> None:
    """README promises that tests/unit needs nothing beyond Python, git, patch and gcc: no
    unit test starts a redis-server (tests/redis_server.py fails without one); those
    tests live in tests/integration, whose prerequisite README names."""
    starters = [p.name for p in sorted((repo_root / "tests" / "unit").glob("*.py"))
                if p.name != Path(__file__).name and "redis_server(" in p.read_text()]
    assert starters == []
    readme = (repo_root / "README.md").read_text()
    assert "`tests/unit` is fast and needs nothing beyond" in readme
    tests_section = readme.split("## Tests", 1)[1].split("\n## ", 1)[0]
    assert "redis-server" in tests_section
