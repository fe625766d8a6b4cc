"""The CMake evaluator behind FetchContent discovery: the tokenizer, three-valued
conditions, if/elseif chains, include() following, function/macro calls, and the
externals (with their override variables) a device's branch reaches. Small inline CMake
trees; the real vLLM sdists are in tests/integration/test_discovery_real_sdists.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from vllm_wheels.build.cmake_eval import UNKNOWN, Condition, Interpreter, tokenize
from vllm_wheels.build.externals import resolve_externals
from vllm_wheels.build.fetchcontent import discover
from vllm_wheels.build.prepare import PreparedPackage
from vllm_wheels.build.sources import FetchedSource
from vllm_wheels.build.stack import ExternalOverride, PackageSpec, Source
from vllm_wheels.cache import Cache
from vllm_wheels.errors import ConfigError
from vllm_wheels.log import Reporter


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def found(root: Path, device: str = "cuda", **kw: str) -> dict[str, tuple[str, str, str | None]]:
    return {e.name: (e.url, e.ref, e.override_env) for e in discover(root, device, **kw)}


def test_tokenizer_comments_quotes_brackets_nesting() -> None:
    text = ('#[[ a bracket comment\nset(NOPE 1) ]]\n'
            'set(A "x \\"y\\" ) # not a comment" [==[raw ${A} ]] "]==] b\\;c) # trailing\n'
            'if((A AND NOT B)\n   OR C)\nendif()\n'
            'message(STATUS #[=[ inline ]=] "m")\n')
    cmds = tokenize(text)
    assert [c.name for c in cmds] == ["set", "if", "endif", "message"]
    assert [(a.text, a.kind) for a in cmds[0].args] == [
        ("A", "unquoted"), ('x \\"y\\" ) # not a comment', "quoted"),
        ("raw ${A} ]] \"", "bracket"), ("b\\;c", "unquoted")]
    assert [a.text for a in cmds[1].args] == ["(", "A", "AND", "NOT", "B", ")", "OR", "C"]
    assert (cmds[0].line, cmds[1].line, cmds[3].line) == (3, 4, 7)
    assert [a.text for a in cmds[3].args] == ["STATUS", "m"]


def cond(text: str, variables: dict[str, str] | None = None) -> bool | None:
    interp = Interpreter(Path("/nonexistent"), {"VLLM_TARGET_DEVICE": "cuda"})
    interp.vars.update(variables or {})
    interp.vars["U"] = UNKNOWN
    return Condition(interp.expand_all(tokenize(f"if({text})\n")[0].args), interp).evaluate()


@pytest.mark.parametrize(("text", "expected"), [
    ('VLLM_TARGET_DEVICE STREQUAL "cuda"', True),
    ('VLLM_TARGET_DEVICE STREQUAL "rocm"', False),
    ('NOT VLLM_TARGET_DEVICE STREQUAL "cuda" AND NOT VLLM_TARGET_DEVICE STREQUAL "rocm"', False),
    ("DEFINED ENV{DEEPGEMM_SRC_DIR}", False),  # no environment at plan time
    ("NOT DEFINED ENV{X}", True),
    ("DEEPGEMM_SRC_DIR", None),  # undefined: unknown, not empty
    ("CUDA_FOUND AND FALSE", False), ("CUDA_FOUND OR ON", True), ("CUDA_FOUND OR OFF", None),
    ("NOT CUDA_FOUND", None), ("U", None), ("NOT U", None),
    ("(U OR YES) AND NOT (0 OR x-NOTFOUND)", True),
    ("IGNORE OR N OR NO OR NOTFOUND", False),
    ('"${V}" VERSION_GREATER_EQUAL 12.8', True), ("V VERSION_LESS 12.10", True),
    ("V VERSION_EQUAL 12.9.0", True), ("V VERSION_GREATER 12.9", False),
    ("${CMAKE_CUDA_COMPILER_VERSION} VERSION_GREATER_EQUAL 13.0", None),
    ("3 LESS 10", True), ("3 GREATER_EQUAL 10", False), ("N10 EQUAL 10", True),
    ('ARCH MATCHES "x86_64|amd64"', True), ('"cuda" IN_LIST DEVICES', True),
    ('"tpu" IN_LIST DEVICES', False), ("EXISTS /etc/passwd", None),
    ("IS_DIRECTORY ${V}", None), ("DEFINED V", True), ("DEFINED CACHE{V}", None),
    ("EMPTY", False), ("FULL", True),
])
def test_conditions_are_three_valued(text: str, expected: bool | None) -> None:
    variables = {"V": "12.9", "N10": "10", "ARCH": "x86_64", "DEVICES": "cuda;rocm",
                 "EMPTY": "", "FULL": "/some/dir"}
    assert cond(text, variables) is expected


def test_known_branch_exact_unknown_branch_union(tmp_path: Path) -> None:
    root = tree(tmp_path, {"CMakeLists.txt": """
set(VLLM_TARGET_DEVICE "cuda" CACHE STRING "device")  # the -D value wins over this default
if (VLLM_TARGET_DEVICE STREQUAL "rocm")
  set(GIT "https://example.invalid/rocm.git")
elseif (VLLM_TARGET_DEVICE STREQUAL "cuda")
  set(GIT "https://example.invalid/cuda.git")
else()
  set(GIT "https://example.invalid/other.git")
endif()
FetchContent_Declare(known GIT_REPOSITORY ${GIT} GIT_TAG v1)
if (CUDA_FOUND)
  set(TAG v2)
else()
  set(TAG v3)
endif()
FetchContent_Declare(merged GIT_REPOSITORY https://example.invalid/m.git GIT_TAG ${TAG})
if (CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.8)
  FetchContent_Declare(new GIT_REPOSITORY https://example.invalid/new.git GIT_TAG v4)
elseif (CUDA_FOUND)
  FetchContent_Declare(old GIT_REPOSITORY https://example.invalid/old.git GIT_TAG v5)
endif()
"""})
    got = found(root)
    assert got["known"] == ("https://example.invalid/cuda.git", "v1", None)
    assert got["merged"] == ("https://example.invalid/m.git", "", None)  # v2 or v3: unknown
    assert {"new", "old"} <= set(got)  # the compiler is unknown: both branches
    assert found(root, "rocm")["known"][0] == "https://example.invalid/rocm.git"
    with_nvcc = found(root, cuda_version="12.8")
    assert "new" in with_nvcc and "old" not in with_nvcc  # known: exactly its branch


def test_include_followed_only_on_the_devices_branch(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "CMakeLists.txt": """
include(${CMAKE_CURRENT_LIST_DIR}/cmake/utils.cmake)
include(FetchContent)
if (VLLM_TARGET_DEVICE STREQUAL "cpu")
  include(${CMAKE_CURRENT_LIST_DIR}/cmake/cpu_extension.cmake)
  return()
endif()
include(cmake/external_projects/thing.cmake)
FetchContent_Declare(after GIT_REPOSITORY https://example.invalid/after.git GIT_TAG ${AFTER})
""",
        "cmake/utils.cmake": "set(AFTER v7)\n",
        "cmake/cpu_extension.cmake":
            "FetchContent_Declare(oneDNN GIT_REPOSITORY https://example.invalid/onednn.git "
            "GIT_TAG v3.10)\n",
        "cmake/external_projects/thing.cmake":
            "FetchContent_Declare(thing GIT_REPOSITORY https://example.invalid/thing.git "
            "GIT_TAG ${AFTER})\nreturn()\nset(AFTER wrong)\n",
        "cmake/external_projects/never_included.cmake":
            "FetchContent_Declare(stray GIT_REPOSITORY https://example.invalid/s.git GIT_TAG x)\n",
    })
    assert set(found(root)) == {"thing", "after"}
    assert found(root)["after"][1] == "v7"  # return() ends only the included file
    cpu = discover(root, "cpu")
    assert [(e.name, e.device) for e in cpu] == [("oneDNN", "cpu")]


def test_function_and_macro_calls(tmp_path: Path) -> None:
    root = tree(tmp_path, {"CMakeLists.txt": """
function(pick OUT WHICH)
  if (WHICH STREQUAL "a")
    set(${OUT} "tag-a" PARENT_SCOPE)
    return()
  endif()
  set(${OUT} "tag-other" PARENT_SCOPE)
endfunction()
macro(fetch_it NAME)
  FetchContent_Declare(${NAME} GIT_REPOSITORY https://example.invalid/${NAME}.git
                       GIT_TAG ${ARGN})
endmacro()
pick(T1 a)
pick(T2 b)
fetch_it(one ${T1})
fetch_it(two ${T2})
set(LIST_OF x y)
list(APPEND LIST_OF z)
foreach(item ${LIST_OF})
  set(LAST ${item})
endforeach()
fetch_it(three ${LAST})
string(TOUPPER "${LAST}" LAST)
fetch_it(four ${LAST})
"""})
    got = found(root)
    assert got["one"][1] == "tag-a" and got["two"][1] == "tag-other"
    assert got["three"][1] == "z"
    assert got["four"][1] == ""  # set by a command not evaluated: unknown, not stale


def test_override_env_from_the_enclosing_chain(tmp_path: Path) -> None:
    root = tree(tmp_path, {"CMakeLists.txt": """
if (DEFINED ENV{DEEPGEMM_SRC_DIR})
  set(DEEPGEMM_SRC_DIR $ENV{DEEPGEMM_SRC_DIR})
endif()
# an unrelated test right above must not be taken for the override
if (DEFINED ENV{UNRELATED})
  message(STATUS "x")
endif()
if(DEEPGEMM_SRC_DIR)
  set(deepgemm_SOURCE_DIR "${DEEPGEMM_SRC_DIR}")
else()
  set(_DEEPGEMM_UPSTREAM_REPO "https://example.invalid/DeepGEMM.git")
  set(_DEEPGEMM_UPSTREAM_TAG "0820030756945b2daec208e8e8255268360f337d")
  if(EXISTS "${_deepgemm_src}/deep_gemm/_C.py")
    set(deepgemm_SOURCE_DIR "${_deepgemm_src}")
  else()
    FetchContent_Populate(
      deepgemm
      SUBBUILD_DIR "${_deepgemm_sub}"
      GIT_REPOSITORY "${_DEEPGEMM_UPSTREAM_REPO}"
      GIT_TAG "${_DEEPGEMM_UPSTREAM_TAG}"
    )
  endif()
endif()
if (NOT DEFINED ENV{ARCHIVE_DIR})
  FetchContent_Declare(archive URL https://example.invalid/a.tar.gz URL_HASH SHA256=abc)
endif()
"""})
    got = found(root)
    assert got["deepgemm"] == ("https://example.invalid/DeepGEMM.git",
                               "0820030756945b2daec208e8e8255268360f337d", "DEEPGEMM_SRC_DIR")
    assert got["archive"] == ("https://example.invalid/a.tar.gz", "SHA256=abc", "ARCHIVE_DIR")


def test_unknown_url_is_a_config_error_naming_the_external(tmp_path: Path) -> None:
    root = tree(tmp_path / "src", {"CMakeLists.txt": """
execute_process(COMMAND python3 pick_tag.py OUTPUT_VARIABLE COMPUTED_TAG)
FetchContent_Declare(computed GIT_REPOSITORY https://example.invalid/c.git
                     GIT_TAG ${COMPUTED_TAG})
"""})
    ext = discover(root)
    assert [(e.name, e.url, e.ref) for e in ext] == [("computed", "https://example.invalid/c.git",
                                                      "")]  # reached, not dropped
    spec = PackageSpec(name="vllm", builder="vllm", source=Source(kind="path"), patches="p")
    prep = PreparedPackage(spec, FetchedSource(None, root, None, None, None), root, (), (), ())
    reporter = Reporter(stream=io.StringIO())
    with pytest.raises(ConfigError) as err:
        resolve_externals(prep, Cache(tmp_path / "cache"), tmp_path, reporter, fetch=False)
    assert "external 'computed'" in str(err.value) and "CMakeLists.txt:3" in str(err.value)
    assert "[packages.vllm.externals.computed]" in err.value.fix
    pinned = PackageSpec(name="vllm", builder="vllm", source=Source(kind="path"), patches="p",
                         externals={"computed": ExternalOverride(
                             url="https://example.invalid/c.git", commit="0" * 40)})
    prep = PreparedPackage(pinned, prep.fetched, root, (), (), ())
    resolved = resolve_externals(prep, Cache(tmp_path / "cache"), tmp_path, reporter,
                                 fetch=False)
    assert [e.origin for e in resolved.externals] == ["to fetch"]  # the stack's pin serves
