"""One source tree per package and version: a change of the source (or its patches) is
prepared again at the same path, with the content's key in the marker file, so that nvcc's
preprocessed output (which carries the path) stays the same for every unchanged unit; and
a CMake cache another builder left in a shared tree is not reused. Real local source trees
(copies of the tiny-cuda-ext fixture) and CMakeCache.txt lines as CMake writes them."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

from vllm_wheels.build.builders.vllm import stale_cmake_cache
from vllm_wheels.build.prepare import ensure_prepared, prepare_package, tree_name
from vllm_wheels.build.stack import load_stack
from vllm_wheels.cache import Cache
from vllm_wheels.layout import PREPARED_MARKER
from vllm_wheels.log import Reporter

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_cuda_ext"
HEADER = ('schema_version = 1\nname = "t"\npython = "3.11"\ncuda_arch_list = "12.0"\n'
          '[torch]\nversion = "2.14.1"\ncuda = "13.0"\n[cuda_toolkit]\nversion = ">=13"\n')


PATCH = """--- a/tiny_cuda_ext/kernel.cu
+++ b/tiny_cuda_ext/kernel.cu
@@ -1,1 +1,2 @@
+// one-file patch
 {first}
"""


def test_a_changed_tree_is_prepared_again_at_the_same_path(tmp_path: Path) -> None:
    stack_file = tmp_path / "stack.toml"
    stack_file.write_text(HEADER + '[packages.tiny-cuda-ext]\nbuilder = "setuptools"\n'
                          f'source = {{ path = "{FIXTURE}", version = "0.1.0" }}\n'
                          'patches = "patches"\n')
    spec = load_stack(stack_file).packages[0]
    cache = Cache(tmp_path / "cache")
    reporter = Reporter(tmp_path / "log", stream=io.StringIO())
    (tmp_path / "patches").mkdir()  # named by the stack: it must exist (empty: no patches)
    first = prepare_package(spec, cache, tmp_path, reporter)
    assert first.tree == cache.tree_parent(False) / tree_name(spec)
    assert first.tree.name.startswith("tiny-cuda-ext-0.1.0-")
    assert json.loads((first.tree / PREPARED_MARKER).read_text())["key"] == first.key
    # What a build leaves in the tree (its build dir) stays while nothing changed.
    (first.tree / "build").mkdir()
    (first.tree / "build" / "object.o").write_text("compiled")
    again = prepare_package(spec, cache, tmp_path, reporter)
    assert again.key == first.key and (again.tree / "build" / "object.o").exists()

    # A one-file patch: the same path, another key, the patched content, a new build dir.
    kernel = FIXTURE / "tiny_cuda_ext" / "kernel.cu"
    (tmp_path / "patches" / "0001-one-file.patch").write_text(
        PATCH.format(first=kernel.read_text().splitlines()[0]))
    (tmp_path / "patches" / "series").write_text("0001-one-file.patch\n")
    changed = prepare_package(spec, cache, tmp_path, reporter)
    assert changed.tree == first.tree and changed.key != first.key
    patched = changed.tree / "tiny_cuda_ext" / "kernel.cu"
    assert patched.read_text().startswith("// one-file patch\n")
    assert not (changed.tree / "build").exists()
    assert sorted(p.name for p in changed.tree.parent.iterdir()) == [first.tree.name]

    # Another patch series directory of the same version (another stack's): its own tree,
    # the first one untouched.
    other = dataclasses.replace(spec, patches="other-patches")
    (tmp_path / "other-patches").mkdir()
    elsewhere = prepare_package(other, cache, tmp_path, reporter)
    assert elsewhere.tree != changed.tree and elsewhere.tree.name.startswith("tiny-cuda-ext-0.1.0-")
    assert patched.read_text().startswith("// one-file patch\n")

    # A build planned before the patch finds the tree changed since its plan: its build
    # step prepares its own content again before compiling.
    ensure_prepared(first)
    assert json.loads((first.tree / PREPARED_MARKER).read_text())["key"] == first.key
    assert patched.read_text() == kernel.read_text()
    ensure_prepared(changed)
    assert patched.read_text().startswith("// one-file patch\n")
    reporter.close()


def test_cmake_cache_of_another_builders_nvcc_is_stale(tmp_path: Path) -> None:
    nvcc = tmp_path / "cache-a" / "cuda-home" / "bin" / "nvcc"
    assert not stale_cmake_cache(tmp_path, nvcc)  # no cache yet: a plain configure
    cache = tmp_path / "CMakeCache.txt"
    cache.write_text("# This is the CMakeCache file.\n"
                     "CMAKE_BUILD_TYPE:STRING=Release\n"
                     f"CMAKE_CUDA_COMPILER:FILEPATH={nvcc}\n")
    assert not stale_cmake_cache(tmp_path, nvcc)
    other = tmp_path / "cache-b" / "cuda-home" / "bin" / "nvcc"
    assert stale_cmake_cache(tmp_path, other)
