"""The one CMake text reader shared by the build (fetchcontent.discover) and the trial
(trial.release): comment stripping and parenthesis matching follow the tokenizer's
lexical rules. Each case is one where the two readers kept before disagreed: bracket
comments `#[[ ]]` and `#[==[ ]==]` spanning lines, quoted strings holding `#` or
parentheses, bracket arguments, nested parentheses, trailing comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_wheels.build import cmake_eval, fetchcontent
from vllm_wheels.trial import release


@pytest.mark.parametrize(("text", "expected"), [
    ("# a whole line\nset(A 1)\n", "\nset(A 1)\n"),
    ("set(A 1) # trailing\n", "set(A 1) \n"),
    ('set(A "x # not a comment") # a comment\n', 'set(A "x # not a comment") \n'),
    ('set(A "a \\" # still quoted")\n', 'set(A "a \\" # still quoted")\n'),
    ("set(A [[raw # kept]])\n", "set(A [[raw # kept]])\n"),
    ("set(A [==[raw ]] # kept]==])\n", "set(A [==[raw ]] # kept]==])\n"),
    ("#[[ two\nlines ]]set(A 1)\n", "\nset(A 1)\n"),
    ("#[==[ one ]] two\nset(NOPE 1)\n]==]\nset(A 1)\n", "\n\n\nset(A 1)\n"),
    ("message(STATUS #[=[ inline ]=] m)\n", "message(STATUS  m)\n"),
    ("set(A x#y)\n", "set(A x\n"),  # `#` ends an unquoted argument, as in tokenize()
])
def test_strip_comments(text: str, expected: str) -> None:
    stripped = cmake_eval.strip_comments(text)
    assert stripped == expected
    assert stripped.count("\n") == text.count("\n")  # line numbers stay the file's


@pytest.mark.parametrize(("text", "expected"), [
    ("if(A AND B) x", "A AND B"),
    ("if((A AND NOT B) OR (C)) x", "(A AND NOT B) OR (C)"),
    ('if(A STREQUAL ")" OR B) x', 'A STREQUAL ")" OR B'),
    ('if(A STREQUAL "\\")" OR B) x', 'A STREQUAL "\\")" OR B'),
    ("if(A STREQUAL [[)]] OR B) x", "A STREQUAL [[)]] OR B"),
    ("if(A # )\n OR B) x", "A # )\n OR B"),
    ("if(A #[[ ) ]] OR B) x", "A #[[ ) ]] OR B"),
    ("if(A OR (B", "A OR (B"),
])
def test_parenthesized(text: str, expected: str) -> None:
    assert cmake_eval.parenthesized(text, text.index("(") + 1) == expected


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_trial_arch_branches_read_through_the_shared_reader(tmp_path: Path) -> None:
    root = write(tmp_path, {"CMakeLists.txt": """\
#[[ an old branch, commented out as a block:
  set(CUDA_SUPPORTED_ARCHS "5.0")
]]
if(CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.8 AND NOT X STREQUAL ")") # (note
  set(CUDA_SUPPORTED_ARCHS "8.0;10.0;12.0")
else() # older nvcc (before 12.8)
  set(CUDA_SUPPORTED_ARCHS "8.0;9.0")
endif()
"""})
    got = [(b.min_nvcc, b.archs, b.where) for b in release.arch_branches(root)]
    assert got == [("12.8", ("8.0", "10.0", "12.0"), "CMakeLists.txt:5"),
                   (None, ("8.0", "9.0"), "CMakeLists.txt:7")]


def test_trial_switches_skip_bracket_comments_and_quoted_hashes(tmp_path: Path) -> None:
    root = write(tmp_path, {"CMakeLists.txt": """\
#[==[
  option(OLD_SWITCH "gone" OFF)
  if(DEFINED ENV{OLD_ENV})
]==]
set(MSG "# not a comment: $ENV{QUOTED_ENV}")
option(NEW_SWITCH "kept" ON) # $ENV{COMMENTED_ENV}
"""})
    got = {(s.kind, s.name, s.where) for s in release.build_switches(root)}
    assert got == {("env", "QUOTED_ENV", "CMakeLists.txt:5"),
                   ("cmake-option", "NEW_SWITCH", "CMakeLists.txt:6")}


def test_discover_ignores_an_override_test_inside_a_bracket_comment(tmp_path: Path) -> None:
    root = write(tmp_path, {"CMakeLists.txt": """\
include(FetchContent)
if (DEFINED ENV{REAL_SRC_DIR})
  message(STATUS "x")
endif()
#[[
  if (DEFINED ENV{COMMENTED_SRC_DIR})
]]
FetchContent_Declare(thing GIT_REPOSITORY "https://example.invalid/t.git#x"
                     GIT_TAG 0123456789012345678901234567890123456789)
"""})
    (ext,) = fetchcontent.discover(root)
    assert (ext.name, ext.url, ext.ref, ext.override_env, ext.declared_in) == (
        "thing", "https://example.invalid/t.git#x", "0123456789012345678901234567890123456789",
        "REAL_SRC_DIR", "CMakeLists.txt:8")
