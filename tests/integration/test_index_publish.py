"""Publishing through the real CLI in subprocesses: the verify gate, immutable filenames,
two publishes at once, a publish killed at the worst moment, mirroring by hash, and
regenerating pages from files + state.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from index_support import (
    LABEL_CU128,
    LABEL_CU130,
    TinyWheels,
    build_verified_tiny_wheels,
    cli,
    iter_files,
    sha256,
    start_server,
    stop_server,
    write_verify_report,
)
from loopback import serve_on_loopback

from vllm_wheels.build.wheelmeta import rewrite_wheel
from vllm_wheels.index.store import PAUSE_ENV

if TYPE_CHECKING:
    from ci_support import CiBuild

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> TinyWheels:
    return build_verified_tiny_wheels(tmp_path_factory.mktemp("tiny"))


def _state(index: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((index / "index-state.json").read_text())
    return data


def _listed(index: Path) -> set[str]:
    state = _state(index)
    assert isinstance(state["files"], list)
    return {f["filename"] for f in state["files"]}


def _pages(index: Path) -> dict[str, bytes]:
    """The served tree as a reader sees it: every page under simple/ plus the state."""
    simple = (index / "simple").resolve()
    pages = {str(p.relative_to(simple)): p.read_bytes() for p in iter_files(simple)}
    pages["index-state.json"] = (index / "index-state.json").read_bytes()
    return pages


def test_identical_republish_is_a_noop_and_changed_bytes_are_refused(
        wheels: TinyWheels, tmp_path: Path) -> None:
    index = tmp_path / "index"
    folder = wheels.variants[LABEL_CU128][0].parent
    cli("publish", "--index", index, "--wheels", folder)
    before = _pages(index)
    again = cli("publish", "--index", index, "--wheels", folder)
    assert "0 added, 2 unchanged" in again.stderr
    assert _pages(index) == before  # not even a new generation

    # A rebuild under the same filename (different manifest -> different bytes), verified.
    rebuilt_dir = tmp_path / "rebuilt"
    plain = wheels.variants[LABEL_CU128][0]
    rebuilt = rewrite_wheel(plain, rebuilt_dir, label=LABEL_CU128, pins={},
                            manifest={"local_label": LABEL_CU128, "rebuilt": True})
    assert rebuilt.name == plain.name and sha256(rebuilt) != sha256(plain)
    write_verify_report([rebuilt])
    proc = cli("publish", "--index", index, "--wheels", rebuilt, check=False)
    assert proc.returncode == 10, proc.stderr
    assert "already published under the same name" in proc.stderr
    assert "immutable" in proc.stderr
    assert _pages(index) == before
    assert sha256(index / "files" / "tinyflash" / plain.name) == sha256(plain)


def test_unverified_wheels_are_refused_unless_a_reason_is_recorded(
        wheels: TinyWheels, tmp_path: Path) -> None:
    index = tmp_path / "index"
    spare_dir = tmp_path / "spare"
    spare_dir.mkdir()
    spare = wheels.spare
    # No report at all.
    proc = cli("publish", "--index", index, "--wheels", spare, check=False)
    assert proc.returncode == 10 and "no verify_abi report" in proc.stderr
    # A report in which it failed.
    copy = spare_dir / spare.name
    copy.write_bytes(spare.read_bytes())
    write_verify_report([copy], failed=[copy])
    proc = cli("publish", "--index", index, "--wheels", copy, check=False)
    assert proc.returncode == 10 and "no passing result" in proc.stderr
    # A report that passed other bytes under this name.
    report = spare_dir / "verify-abi.json"
    data = json.loads(report.read_text())
    data["wheels"][0].update(passed=True, sha256="0" * 64)
    report.write_text(json.dumps(data))
    proc = cli("publish", "--index", index, "--wheels", copy, check=False)
    assert proc.returncode == 10 and "passed a different file" in proc.stderr
    assert not (index / "current").exists()
    # An empty reason is not a reason.
    proc = cli("publish", "--index", index, "--wheels", copy, "--allow-unverified", " ",
               check=False)
    assert proc.returncode == 2
    reason = "no sm_120 host free today; smoke-tested by hand"
    cli("publish", "--index", index, "--wheels", copy, "--allow-unverified", reason)
    (entry,) = _state(index)["files"]  # type: ignore[misc]
    assert (entry["verification"], entry["verification_detail"]) == ("unverified", reason)
    page = json.loads((index / "simple" / "sparepkg" / "index.json").read_text())
    assert page["files"][0]["_vllm_wheels"]["verification_detail"] == reason
    assert reason in cli("index-list", "--index", index).stdout


def test_two_concurrent_publishes_both_land(wheels: TinyWheels, tmp_path: Path) -> None:
    index = tmp_path / "index"
    first = subprocess.Popen(
        [sys.executable, "-m", "vllm_wheels", "publish", "--index", str(index), "--wheels",
         str(wheels.variants[LABEL_CU128][0].parent)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, PAUSE_ENV: "3"})
    assert first.stderr is not None
    for line in first.stderr:  # the first publish holds the lock, its generation written
        if "(test hook)" in line:
            break
    second = cli("publish", "--index", index, "--wheels",
                 wheels.variants[LABEL_CU130][0].parent, timeout=60)
    assert "waiting for another writer" in second.stderr
    first_err = first.stderr.read()
    first.stderr.close()
    assert first.wait(timeout=60) == 0, first_err
    expected = {w.name for w in wheels.labelled}
    assert _listed(index) == expected
    for project in ("tinyflash", "tinyvllm"):
        page = json.loads((index / "simple" / project / "index.json").read_text())
        assert {f["filename"] for f in page["files"]} == {n for n in expected
                                                          if n.startswith(project)}
    assert _state(index)["generation"] == 2


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_interrupted_publish_leaves_the_previous_index(wheels: TinyWheels, tmp_path: Path,
                                                       sig: signal.Signals) -> None:
    index = tmp_path / "index"
    cli("publish", "--index", index, "--wheels", wheels.yankme["1.0"].parent)
    before = _pages(index)
    server = start_server(index, tmp_path / "serve.log")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm_wheels", "publish", "--index", str(index),
             "--wheels", str(wheels.spare), "--allow-unverified", "test"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, PAUSE_ENV: "60"})
        assert proc.stderr is not None
        for line in proc.stderr:
            if "(test hook)" in line:  # files, pages and state written; not switched yet
                break
        assert (index / "files" / "sparepkg" / wheels.spare.name).exists()
        proc.send_signal(sig)
        rest = proc.stderr.read()
        proc.stderr.close()
        code = proc.wait(timeout=30)
        assert code == (130 if sig == signal.SIGTERM else -signal.SIGKILL), rest
        assert _pages(index) == before
        with urllib.request.urlopen(server.url) as resp:
            assert b"sparepkg" not in resp.read()
    finally:
        stop_server(server)
    leftovers = [p.name for p in (index / "generations").iterdir()]
    if sig == signal.SIGTERM:  # cleaned up on the way out
        assert leftovers == ["000001"]
        assert not list((index / "files").glob("sparepkg/*"))
    # The next writer cleans whatever is left and publishes normally.
    cli("publish", "--index", index, "--wheels", wheels.spare, "--allow-unverified", "test")
    assert wheels.spare.name in _listed(index)
    assert sorted(p.name for p in (index / "generations").iterdir()) == ["000001", "000002"]


def test_mirror_companion_wheel_by_pinned_hash(wheels: TinyWheels, tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"  # stands for e.g. the PyTorch CUDA index
    cli("publish", "--index", upstream, "--wheels", wheels.yankme["1.0"].parent)
    index = tmp_path / "index"
    server = start_server(upstream, tmp_path / "serve.log")
    try:
        name = wheels.yankme["1.0"].name
        url = server.url.removesuffix("simple/") + f"files/yankme/{name}"
        good = sha256(wheels.yankme["1.0"])
        proc = cli("index-mirror", "--index", index, url, check=False)
        assert proc.returncode == 10 and "no sha256 pinned" in proc.stderr
        proc = cli("index-mirror", "--index", index, url + "#sha256=" + "1" * 64, check=False)
        assert proc.returncode == 10 and "sha256 mismatch" in proc.stderr
        assert not (index / "current").exists()
        assert not list(index.glob(".incoming-*"))
        cli("index-mirror", "--index", index, f"{url}#sha256={good}")
        cli("index-mirror", "--index", index, str(wheels.yankme["1.1"]), "--sha256",
            sha256(wheels.yankme["1.1"]))
    finally:
        stop_server(server)
    files = {f["filename"]: f for f in _state(index)["files"]}  # type: ignore[attr-defined]
    assert files[name]["origin"] == "mirror" and files[name]["sha256"] == good
    assert files[name]["verification_detail"] == url
    assert sha256(index / "files" / "yankme" / name) == good


def test_publishing_into_a_copy_with_symlinks_followed_is_refused_not_emptied(
        wheels: TinyWheels, tmp_path: Path) -> None:
    """`cp -rL` (or rsync -L) turns `current` into a plain directory; rsync without -l
    drops it. Either way the copy must be refused before anything in it is deleted."""
    original = tmp_path / "index"
    cli("publish", "--index", original, "--wheels", wheels.yankme["1.0"].parent)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-rL", str(original), str(copy)], check=True)
    assert (copy / "current").is_dir() and not (copy / "current").is_symlink()
    before = {p: p.read_bytes() for p in iter_files(copy)}
    assert copy / "files" / "yankme" / (wheels.yankme["1.0"].name + ".metadata") in before

    proc = cli("publish", "--index", copy, "--wheels", wheels.spare,
               "--allow-unverified", "test", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "symlinks followed" in proc.stderr and "original index" in proc.stderr
    assert {p: p.read_bytes() for p in iter_files(copy)} == before

    remove_current = copy / "current"
    shutil.rmtree(remove_current)  # as `rsync -r` (no -l) leaves it: no `current` at all
    before = {p: b for p, b in before.items() if not p.is_relative_to(remove_current)}
    proc = cli("publish", "--index", copy, "--wheels", wheels.spare,
               "--allow-unverified", "test", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "is missing" in proc.stderr
    assert {p: p.read_bytes() for p in iter_files(copy)} == before
    # The original is untouched by all this and still publishes.
    cli("publish", "--index", original, "--wheels", wheels.spare, "--allow-unverified", "test")
    assert wheels.spare.name in _listed(original)


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_mirror_url_with_encoded_path_separators_is_refused_before_download(
        tmp_path: Path) -> None:
    """A URL whose last segment decodes to ../../victim.txt would be downloaded to (and,
    on a hash mismatch, deleted from) a path outside the index's download folder."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "victim.txt").write_text("what the server has\n")
    victim = tmp_path / "victim.txt"  # index/.incoming-PID/../../victim.txt
    victim.write_text("precious\n")
    handler = functools.partial(_RecordingHandler, directory=str(served))
    _RecordingHandler.requests = []
    with serve_on_loopback(handler) as base:
        index = tmp_path / "index"
        for path in ("/..%2F..%2Fvictim.txt", "/x/..%2f..%2fvictim.txt", "/x/%2E%2E",
                     "/x/.hidden-1.0-py3-none-any.whl", "/victim.txt", "/dir/"):
            proc = cli("index-mirror", "--index", index, f"{base}{path}#sha256={'1' * 64}",
                       check=False)
            assert proc.returncode == 10, (path, proc.stderr)
            assert "does not name a wheel file" in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr
    assert victim.read_text() == "precious\n"
    assert _RecordingHandler.requests == []  # refused before any download
    assert not list(index.glob(".incoming-*"))


def test_regenerate_rebuilds_identical_pages_from_files_and_state(
        wheels: TinyWheels, tmp_path: Path) -> None:
    index = tmp_path / "index"
    cli("publish", "--index", index, "--wheels", *{w.parent for w in wheels.labelled})
    cli("index-yank", "--index", index, f"tinyvllm==1.0+{LABEL_CU130}", "--reason", "old")
    before = _pages(index)
    cli("publish", "--index", index, "--regenerate")
    after = _pages(index)
    state_before = json.loads(before.pop("index-state.json"))
    state_after = json.loads(after.pop("index-state.json"))
    assert after == before
    assert state_after["generation"] == state_before["generation"] + 1
    assert state_after["files"] == state_before["files"]
    # A file changed on disk behind the index's back is caught by --check-hashes.
    victim = index / "files" / "tinyflash" / wheels.variants[LABEL_CU128][0].name
    victim.write_bytes(victim.read_bytes() + b"\0")
    proc = cli("publish", "--index", index, "--regenerate", "--check-hashes", check=False)
    assert proc.returncode == 10 and "changed on disk" in proc.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_upload_to_a_remote_index_with_uv_publish(wheels: TinyWheels, tmp_path: Path) -> None:
    """A real pypiserver on loopback as the remote index (no auth: its htpasswd support
    needs an extra package); credentials are passed from the environment only."""
    remote = tmp_path / "remote"
    remote.mkdir()
    port = _free_port()
    log = (tmp_path / "pypiserver.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "pypiserver", "run", "-i", "127.0.0.1", "-p", str(port),
         "-a", ".", "-P", ".", "--disable-fallback", str(remote)],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/simple/").close()
                break
            except OSError:
                time.sleep(0.2)
        config = tmp_path / "index.toml"
        config.write_text(f'schema_version = 1\n[upload]\nurl = "http://127.0.0.1:{port}/"\n'
                          f'check_url = "http://127.0.0.1:{port}/simple/"\n')
        env = {"UV_PUBLISH_USERNAME": "ci", "UV_PUBLISH_PASSWORD": "from-the-environment"}
        index = tmp_path / "index"
        folder = wheels.yankme["1.0"].parent
        done = cli("publish", "--index", index, "--wheels", folder, "--upload",
                   "--index-config", config, env=env)
        assert "from-the-environment" not in done.stdout + done.stderr
        assert sorted(p.name for p in remote.iterdir()) == sorted(
            w.name for w in wheels.yankme.values())
        assert all(sha256(remote / w.name) == sha256(w) for w in wheels.yankme.values())
        # Idempotent: files already on the remote are skipped (uv publish --check-url).
        cli("publish", "--index", index, "--wheels", folder, "--upload", "--index-config",
            config, env=env)
        config.write_text(config.read_text() + 'password = "hunter2"\n')
        proc = cli("publish", "--index", index, "--wheels", folder, "--upload",
                   "--index-config", config, check=False)
        assert proc.returncode == 2 and "credential" in proc.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def test_build_verify_publish_chain_with_the_real_verify_abi(
        ci_build: CiBuild, torch_cpu_213: Path, shared_cache: Path, tmp_path: Path) -> None:
    """No stand-in: the CUDA 13 test stack's wheels, the report build_wheels wrote by
    running verify_abi against its build venv, then a verify_abi run against another
    torch (2.13.0 CPU) that fails and replaces the report: publishing follows the report."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for item in [*ci_build.out.glob("*.whl"), ci_build.out / "verify-abi.json"]:
        (wheels / item.name).write_bytes(item.read_bytes())
    index = tmp_path / "index"
    cli("publish", "--wheels", wheels, "--index", index)
    assert {p.name for p in wheels.glob("*.whl")} <= _listed(index)
    fresh = tmp_path / "fresh-index"
    failed = cli("verify-abi", "--wheels", wheels, "--python", torch_cpu_213, "--cache-dir",
                 shared_cache, check=False)
    assert failed.returncode == 8
    refused = cli("publish", "--wheels", wheels, "--index", fresh, check=False)
    assert refused.returncode == 10, refused.stderr
    assert not (fresh / "index-state.json").exists() or not _listed(fresh)


def _copy_folder(folder: Path, dest: Path) -> Path:
    """A variant's folder (its wheels and the stand-in passing report) to change freely."""
    shutil.copytree(folder, dest)
    return dest


def test_the_gate_survives_a_run_that_could_not_check(wheels: TinyWheels, tmp_path: Path
                                                      ) -> None:
    """A real verify-abi run against a Python without torch (exit 9) over the directory:
    the passing results beside the wheels stay, and publishing still accepts them."""
    folder = _copy_folder(wheels.variants[LABEL_CU128][0].parent, tmp_path / "wheels")
    before = (folder / "verify-abi.json").read_bytes()
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    proc = cli("verify-abi", "--wheels", folder, "--python", bare / "bin" / "python",
               "--no-import", "--cache-dir", tmp_path / "cache", check=False)
    assert proc.returncode == 9, proc.stdout + proc.stderr
    assert "no torch in the runtime" in proc.stdout
    assert (folder / "verify-abi.json").read_bytes() == before
    assert "left as it was" in proc.stderr
    # --json F that already holds a report is not replaced by a run that could not check;
    # a new F is written (to read why).
    kept = tmp_path / "kept.json"
    kept.write_bytes(before)
    fresh = tmp_path / "fresh.json"
    for target in (kept, fresh):
        proc = cli("verify-abi", "--wheels", folder, "--python", bare / "bin" / "python",
                   "--no-import", "--cache-dir", tmp_path / "cache", "--json", target,
                   check=False)
        assert proc.returncode == 9
    assert kept.read_bytes() == before
    assert json.loads(fresh.read_text())["status"] == "unknown"
    index = tmp_path / "index"
    cli("publish", "--wheels", folder, "--index", index)
    assert _listed(index) == {w.name for w in wheels.variants[LABEL_CU128]}


def test_the_gate_survives_a_mismatch_run_with_json_elsewhere(
        wheels: TinyWheels, torch_cpu_213: Path, tmp_path: Path) -> None:
    """A real verify-abi run against another torch (2.13.0 CPU; the wheels say 2.9.0+cu128)
    with --json F: it fails (exit 8) and writes F only; the results beside the wheels,
    and so the gate, are untouched."""
    folder = _copy_folder(wheels.variants[LABEL_CU128][0].parent, tmp_path / "wheels")
    before = (folder / "verify-abi.json").read_bytes()
    elsewhere = tmp_path / "against-2.13.json"
    proc = cli("verify-abi", "--wheels", folder, "--python", torch_cpu_213, "--no-import",
               "--cache-dir", tmp_path / "cache", "--json", elsewhere, check=False)
    assert proc.returncode == 8, proc.stdout + proc.stderr
    report = json.loads(elsewhere.read_text())
    assert report["status"] == "fail"
    assert report["runtime"]["torch"]["version"].startswith("2.13.0")
    assert (folder / "verify-abi.json").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*(w.name for w in wheels.variants[LABEL_CU128]), "verify-abi.json"])
    index = tmp_path / "index"
    cli("publish", "--wheels", folder, "--index", index)
    assert _listed(index) == {w.name for w in wheels.variants[LABEL_CU128]}
    # Publishing from F itself follows F: it failed there.
    refused = cli("publish", "--wheels", folder, "--index", tmp_path / "other",
                  "--report", elsewhere, check=False)
    assert refused.returncode == 10 and "its latest result there is fail" in refused.stderr


def test_an_only_build_leaves_one_coherent_verified_set(tmp_path: Path) -> None:
    """The last step of build_wheels (output.verify_and_publish, with the real
    verify_abi against this interpreter: these tiny wheels use no torch) after an earlier
    full build: `--only tinyflash` makes tinyflash 1.1. The earlier tinyflash 1.0 (replaced) and
    a wheel of an older stack definition are removed; tinyvllm of the same stack stays, verified
    with the new wheel; the directory, its verify-abi.json agree, and publishing takes exactly
    that set."""
    from index_support import _build_project

    from vllm_wheels.build.output import BuiltWheel, verify_and_publish
    from vllm_wheels.log import Reporter
    from vllm_wheels.verify.report import passing_wheels

    digest, older = "d" * 64, "e" * 64
    label = "cpu.tiny"
    src, plain = tmp_path / "src", tmp_path / "plain"

    def ours(name: str, version: str, out: Path, stack_digest: str = digest) -> Path:
        return rewrite_wheel(_build_project(src / f"{name}{version}", name, version, plain),
                             out, label=label, pins={},
                             manifest={"local_label": label,
                                       "stack": {"name": "tiny", "digest": stack_digest}})

    out = tmp_path / "wheels" / "tiny"
    flash_10 = ours("tinyflash", "1.0", out)
    vllm_10 = ours("tinyvllm", "1.0", out)
    gone = ours("tinygone", "1.0", out, stack_digest=older)
    write_verify_report([flash_10, vllm_10, gone])  # stand-in: the earlier build's
    staged = ours("tinyflash", "1.1", tmp_path / "staging")
    built = {"tinyflash": BuiltWheel("tinyflash", staged, sha256(staged),
                                     staged.stat().st_size, 1.0)}
    log = tmp_path / "build.log"
    reporter = Reporter(log)
    try:
        placed, kept = verify_and_publish(out, digest, Path(sys.executable),
                                           tmp_path / "verify", built, reporter)
    finally:
        reporter.close()
    on_disk = {p.name: sha256(p) for p in out.glob("*.whl")}
    assert set(on_disk) == {staged.name, vllm_10.name}
    assert [p.path.name for p in placed] == [staged.name]
    assert kept == [vllm_10]
    assert passing_wheels(out / "verify-abi.json") == on_disk
    results = json.loads((out / "verify-abi.json").read_text())
    assert results["schema_version"] == 2
    # Both were checked by this run (the real one, not the stand-in of the earlier build).
    assert all(r["runtime"]["python"] == sys.executable
               for r in results["results"].values()), results
    index = tmp_path / "index"
    cli("publish", "--wheels", out, "--index", index)
    assert _listed(index) == set(on_disk)


def test_a_wheel_someone_else_put_in_the_output_dir_is_never_removed(tmp_path: Path) -> None:
    """A real wheel built by setuptools (no build manifest) beside the set: the last build
    step refuses the folder (exit 2, naming it) and removes nothing, where it used to
    delete it as "not built by this pipeline"."""
    from index_support import _build_project

    from vllm_wheels.build.output import BuiltWheel, verify_and_publish
    from vllm_wheels.errors import ConfigError
    from vllm_wheels.log import Reporter

    digest, label = "d" * 64, "cpu.tiny"
    src, plain, out = tmp_path / "src", tmp_path / "plain", tmp_path / "wheels" / "tiny"
    foreign = _build_project(src / "foreign", "foreign", "1.0", out)
    before = sha256(foreign)
    staged = rewrite_wheel(_build_project(src / "tinyflash", "tinyflash", "1.1", plain),
                           tmp_path / "staging", label=label, pins={},
                           manifest={"local_label": label,
                                     "stack": {"name": "tiny", "digest": digest}})
    built = {"tinyflash": BuiltWheel("tinyflash", staged, sha256(staged),
                                     staged.stat().st_size, 1.0)}
    with pytest.raises(ConfigError) as info:
        verify_and_publish(out, digest, Path(sys.executable), tmp_path / "verify", built,
                           Reporter(None))
    assert info.value.exit_code == 2
    assert f"{foreign.name}: no build manifest: not built by this pipeline" in info.value.what
    assert sorted(p.name for p in out.iterdir()) == [foreign.name]
    assert sha256(foreign) == before
