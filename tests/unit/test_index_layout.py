"""Wheel index, in process: page contents (PEP 503/592/629/658/691/700/714), the state
file, publishing rules and the listing's needs. Wheels here are minimal but valid wheel
archives written with zipfile (the integration tests use setuptools-built ones)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from vllm_wheels.cache import temp_sibling
from vllm_wheels.errors import ConfigError, DiskFullError, IndexPublishError
from vllm_wheels.index import layout, listing, publish, yank
from vllm_wheels.index.store import FileRecord, IndexDir, IndexState, place_file
from vllm_wheels.log import Reporter
from vllm_wheels.verify.report import passing_wheels, read_results, record_results


def make_wheel(folder: Path, name: str, version: str, *, requires_python: str | None = None,
               requires: tuple[str, ...] = (), extra: bytes = b"") -> Path:
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        meta.append(f"Requires-Python: {requires_python}")
    meta += [f"Requires-Dist: {r}" for r in requires]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{dist}/__init__.py", b"X = 1\n" + extra)
        zf.writestr(f"{info}/METADATA", "\n".join(meta) + "\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                                     "Tag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    path.write_bytes(buf.getvalue())
    return path


def to_add(wheels: list[Path], verification: str = "unverified") -> list[publish.WheelToAdd]:
    return [publish.WheelToAdd(path=w, facts=layout.inspect_wheel(w),
                              sha256=hashlib.sha256(w.read_bytes()).hexdigest(),
                              size=w.stat().st_size, origin="built", verification=verification,
                              verification_detail="unit test") for w in wheels]


@pytest.fixture
def reporter() -> Reporter:
    return Reporter(None, stream=io.StringIO())


def test_pages_carry_hashes_metadata_requires_python_and_yank(tmp_path: Path,
                                                              reporter: Reporter) -> None:
    index = IndexDir(tmp_path / "index")
    wheel = make_wheel(tmp_path / "in", "My_Pkg", "1.0+cu128.sm120", requires_python=">=3.10")
    publish.add_to_index(index, to_add([wheel]), reporter)
    yank.set_yanked(index, [wheel.name], 'bad "build" <sm_120>', reporter)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    metadata = (index.files / "my-pkg" / (wheel.name + ".metadata")).read_bytes()
    meta_sha = hashlib.sha256(metadata).hexdigest()
    assert metadata.startswith(b"Metadata-Version: 2.1\nName: My_Pkg\n")

    root = (index.simple / "index.html").read_text()
    assert '<meta name="pypi:repository-version" content="1.1">' in root
    assert '<a href="my-pkg/">my-pkg</a>' in root  # normalized name, URL ends with /
    html_page = (index.simple / "my-pkg" / "index.html").read_text()
    assert wheel.name == "My_Pkg-1.0+cu128.sm120-py3-none-any.whl"
    assert (f'href="../../files/my-pkg/My_Pkg-1.0%2Bcu128.sm120-py3-none-any.whl#sha256={sha}"'
            in html_page)
    assert 'data-requires-python="&gt;=3.10"' in html_page
    assert f'data-core-metadata="sha256={meta_sha}"' in html_page
    assert f'data-dist-info-metadata="sha256={meta_sha}"' in html_page
    assert 'data-yanked="bad &quot;build&quot; &lt;sm_120&gt;"' in html_page
    assert f">{wheel.name}</a>" in html_page

    data = json.loads((index.simple / "my-pkg" / "index.json").read_text())
    assert data["meta"] == {"api-version": "1.1"}
    assert data["versions"] == ["1.0+cu128.sm120"]
    (item,) = data["files"]
    assert item["hashes"] == {"sha256": sha}
    assert item["core-metadata"] == {"sha256": meta_sha}
    assert "dist-info-metadata" not in item  # PEP 714: never in JSON
    assert item["requires-python"] == ">=3.10"
    assert item["yanked"] == 'bad "build" <sm_120>'
    assert item["size"] == wheel.stat().st_size
    assert len(item["upload-time"]) == len("2026-01-01T00:00:00.000000Z")
    assert item["upload-time"].endswith("Z")
    root_json = json.loads((index.simple / "index.json").read_text())
    assert root_json["projects"] == [{"name": "my-pkg"}]


def test_versions_sorted_as_versions_and_unyank_clears_the_attribute(
        tmp_path: Path, reporter: Reporter) -> None:
    index = IndexDir(tmp_path / "index")
    wheels = [make_wheel(tmp_path / "in", "pkg", v) for v in ("1.10", "1.9", "1.0rc1")]
    publish.add_to_index(index, to_add(wheels), reporter)
    data = json.loads((index.simple / "pkg" / "index.json").read_text())
    assert data["versions"] == ["1.0rc1", "1.9", "1.10"]
    assert [f["filename"].split("-")[1] for f in data["files"]] == ["1.0rc1", "1.9", "1.10"]
    assert yank.set_yanked(index, ["pkg==1.9"], "r", reporter) == [wheels[1].name]
    assert yank.set_yanked(index, ["pkg==1.9"], "r", reporter) == []  # already so
    assert yank.set_yanked(index, [wheels[1].name], None, reporter) == [wheels[1].name]
    assert "data-yanked" not in (index.simple / "pkg" / "index.html").read_text()
    with pytest.raises(IndexPublishError, match="not in the index"):
        yank.set_yanked(index, ["pkg-9.9-py3-none-any.whl"], "r", reporter)
    with pytest.raises(ConfigError):
        yank.set_yanked(index, [wheels[0].name], "  ", reporter)


def test_immutability_noop_and_conflict(tmp_path: Path, reporter: Reporter) -> None:
    index = IndexDir(tmp_path / "index")
    first = make_wheel(tmp_path / "a", "pkg", "1.0")
    result = publish.add_to_index(index, to_add([first]), reporter)
    assert (result.added, result.generation) == ((first.name,), 1)
    result = publish.add_to_index(index, to_add([first]), reporter)
    assert (result.added, result.unchanged, result.generation) == ((), (first.name,), 1)
    other = make_wheel(tmp_path / "b", "pkg", "1.0", extra=b"# different bytes\n")
    new = make_wheel(tmp_path / "b", "newpkg", "1.0")
    with pytest.raises(IndexPublishError, match="already published") as info:
        publish.add_to_index(index, to_add([new, other]), reporter)
    assert info.value.exit_code == 10
    # All or nothing: the wheel without a conflict did not get in either.
    assert set(index.load().files) == {first.name}
    assert not (index.files / "newpkg").exists()


def test_regenerated_pages_are_byte_identical(tmp_path: Path, reporter: Reporter) -> None:
    index = IndexDir(tmp_path / "index")
    wheels = [make_wheel(tmp_path / "in", n, "2.0", requires_python=">=3.9")
              for n in ("a", "b")]
    publish.add_to_index(index, to_add(wheels), reporter)
    before = {p.relative_to(index.simple.resolve()): p.read_bytes()
              for p in index.simple.resolve().rglob("*") if p.is_file()}
    assert publish.regenerate(index, reporter) == 2
    after = {p.relative_to(index.simple.resolve()): p.read_bytes()
             for p in index.simple.resolve().rglob("*") if p.is_file()}
    assert after == before
    # Old generations are pruned: the current one and one before it stay.
    publish.regenerate(index, reporter)
    assert sorted(p.name for p in index.generations.iterdir()) == ["000002", "000003"]


def test_state_roundtrip_and_rejections() -> None:
    record = FileRecord(filename="a-1.0-py3-none-any.whl", project="a", version="1.0",
                        sha256="0" * 64, size=1, upload_time="2026-01-01T00:00:00.000000Z",
                        origin="built", verification="verify-abi", verification_detail="x",
                        history=({"action": "publish", "at": "t", "reason": "x"},))
    state = IndexState(generation=4, files={record.filename: record})
    again = IndexState.from_json(state.to_json(), "state")
    assert again == state
    data = json.loads(state.to_json())
    data["files"][0]["extra"] = 1
    with pytest.raises(ConfigError, match="unknown keys"):
        IndexState.from_json(json.dumps(data), "state")
    data["files"][0].pop("extra")
    data["schema_version"] = 2
    with pytest.raises(ConfigError, match="schema_version"):
        IndexState.from_json(json.dumps(data), "state")


def test_inspect_wheel_rejects_bad_names_and_mismatched_metadata(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-wheel.zip"
    bad.write_bytes(b"x")
    with pytest.raises(IndexPublishError, match="not a valid wheel filename"):
        layout.inspect_wheel(bad)
    wheel = make_wheel(tmp_path, "pkg", "1.0")
    renamed = wheel.rename(tmp_path / "pkg-2.0-py3-none-any.whl")
    with pytest.raises(IndexPublishError, match="METADATA"):
        layout.inspect_wheel(renamed)


def test_verify_gate_requires_the_exact_sha256(tmp_path: Path, reporter: Reporter) -> None:
    wheel = make_wheel(tmp_path / "w", "pkg", "1.0")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    report = tmp_path / "w" / "verify-abi.json"
    entry = {"filename": wheel.name, "sha256": sha, "passed": True, "checks": []}
    report.write_text(json.dumps({"schema_version": 1, "wheels": [entry]}))
    verdict = publish.verification_of([wheel], {wheel: sha}, report=None,
                                      allow_unverified=None, reporter=reporter)
    assert verdict[wheel][0] == "verify-abi"
    assert verdict[wheel][1].startswith("verify-abi.json sha256:")
    with pytest.raises(IndexPublishError, match="passed a different file"):
        publish.verification_of([wheel], {wheel: "f" * 64}, report=None,
                                allow_unverified=None, reporter=reporter)
    verdict = publish.verification_of([wheel], {wheel: "f" * 64}, report=None,
                                      allow_unverified="hand-tested", reporter=reporter)
    assert verdict[wheel] == ("unverified", "hand-tested")


@pytest.mark.parametrize(("label", "cuda", "arch"), [
    ("cu128.torch290.sm120", "12.8", ("12.0",)),
    ("cu130.torch2141.sm90.sm120a", "13.0", ("9.0", "12.0")),
    ("cpu", None, ()),
    ("", None, ()),
])
def test_needs_from_local_label(label: str, cuda: str | None, arch: tuple[str, ...]) -> None:
    assert listing._cuda_from_label(label) == cuda
    assert listing._arch_from_label(label) == arch


def test_listing_falls_back_to_requires_dist(tmp_path: Path, reporter: Reporter) -> None:
    index = IndexDir(tmp_path / "index")
    wheel = make_wheel(tmp_path / "in", "ext", "1.0+cu128.sm120",
                       requires=("torch==2.9.0", "numpy"))
    torch = make_wheel(tmp_path / "in", "torch", "2.9.0+cu128")
    publish.add_to_index(index, to_add([wheel, torch]), reporter)
    rows = {r.project: r for r in listing.list_index(index)}
    assert (rows["ext"].torch, rows["ext"].cuda, rows["ext"].arch, rows["ext"].needs_from) \
        == ("==2.9.0", "12.8", ("12.0",), "metadata")
    assert (rows["torch"].torch, rows["torch"].cuda, rows["torch"].needs_from) \
        == (None, "12.8", "label")
    table = listing.render_table(list(rows.values()))
    assert "cu128.sm120" in table and "NO: unit test" in table


def test_a_wheel_replaced_after_its_check_is_not_published(tmp_path: Path,
                                                           reporter: Reporter) -> None:
    """The wheel is hashed (and checked) before the lock is taken and copied after it: a
    file swapped in between must not enter the index under the checked sha256."""
    index = IndexDir(tmp_path / "index")
    ok = make_wheel(tmp_path / "in", "okpkg", "1.0")
    wheel = make_wheel(tmp_path / "in", "pkg", "1.0")
    checked = to_add([ok, wheel])  # sha256 of the original bytes
    swapped = make_wheel(tmp_path / "in", "pkg", "1.0", extra=b"# other bytes\n")
    assert swapped == wheel
    with pytest.raises(IndexPublishError, match="changed while publishing"):
        publish.add_to_index(index, checked, reporter)
    # Nothing of the batch is left, and the next publish is not refused because of it.
    assert not [p for p in index.root.rglob("*") if p.is_file() and p.name != ".lock"]
    assert index.load() == IndexState()
    assert publish.add_to_index(index, to_add([wheel]), reporter).added == (wheel.name,)

    # The same for the local-path branch of mirror: checked against the pin, then swapped.
    mirrored = make_wheel(tmp_path / "mirror", "mirrored", "2.0")
    pin = hashlib.sha256(mirrored.read_bytes()).hexdigest()
    found = publish.mirrored_wheels_to_add([str(mirrored)], [pin], tmp_path / "incoming", reporter)
    make_wheel(tmp_path / "mirror", "mirrored", "2.0", extra=b"# swapped\n")
    with pytest.raises(IndexPublishError, match="changed while publishing"):
        publish.add_to_index(index, found, reporter)
    assert set(index.load().files) == {wheel.name}
    assert not [p for p in index.files.rglob("mirrored*") if p.is_file()]


def test_invalid_metadata_version_is_an_index_error(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "pkg", "1.0")
    rewritten = tmp_path / "out" / wheel.name
    rewritten.parent.mkdir()
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(rewritten, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/METADATA"):
                data = data.replace(b"Version: 1.0", b"Version: not/a.version")
            dst.writestr(item, data)
    with pytest.raises(IndexPublishError, match=r"invalid Version 'not/a.version'") as info:
        layout.inspect_wheel(rewritten)
    assert wheel.name in info.value.what


def test_check_hashes_names_a_missing_file(tmp_path: Path, reporter: Reporter) -> None:
    index = IndexDir(tmp_path / "index")
    wheel = make_wheel(tmp_path / "in", "pkg", "1.0")
    publish.add_to_index(index, to_add([wheel]), reporter)
    index.file_path("pkg", wheel.name).unlink()
    with pytest.raises(IndexPublishError, match="missing on disk") as info:
        publish.regenerate(index, reporter, check_hashes=True)
    assert wheel.name in info.value.what


def test_a_stray_plain_file_under_files_is_left_alone(tmp_path: Path,
                                                      reporter: Reporter) -> None:
    index = IndexDir(tmp_path / "index")
    first = make_wheel(tmp_path / "in", "pkg", "1.0")
    publish.add_to_index(index, to_add([first]), reporter)
    stray = index.files / "README.txt"
    stray.write_text("copied here by hand\n")
    second = make_wheel(tmp_path / "in", "other", "1.0")
    assert publish.add_to_index(index, to_add([second]), reporter).added == (second.name,)
    assert stray.read_text() == "copied here by hand\n"
    assert set(index.load().files) == {first.name, second.name}


def test_disk_full_while_placing_a_wheel_leaves_nothing(tmp_path: Path) -> None:
    """A real ENOSPC from the kernel: the temporary name place_file writes to is made a
    symlink to /dev/full, where every write fails with "No space left on device"."""
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is Linux-only")
    wheel = make_wheel(tmp_path / "in", "pkg", "1.0")
    dest = tmp_path / "index" / "files" / "pkg" / wheel.name
    dest.parent.mkdir(parents=True)
    temp_sibling(dest).symlink_to("/dev/full")
    with pytest.raises(DiskFullError, match="disk full while writing") as info:
        place_file(wheel, dest, hashlib.sha256(wheel.read_bytes()).hexdigest())
    assert info.value.exit_code == 7
    assert list(dest.parent.iterdir()) == []  # neither the file nor its temporary name


def _run(runtime: str, verdicts: dict[Path, str]) -> dict[str, object]:
    """A run's report (schema 1, the shape abi.Report.to_dict gives) with these verdicts."""
    return {"schema_version": 1, "created": "2026-01-01T00:00:00Z",
            "runtime": {"python": runtime, "torch": {"version": runtime}},
            "wheels": [{"filename": w.name, "sha256": hashlib.sha256(w.read_bytes()).hexdigest(),
                        "passed": status == "pass", "status": status, "checks": []}
                       for w, status in verdicts.items()]}


def test_results_beside_the_wheels_are_kept_per_sha256(tmp_path: Path,
                                                       reporter: Reporter) -> None:
    """A run changes a wheel's result only when it reached a verdict on those bytes: a run
    over other files or one that could not check a wheel keeps its pass; results of files
    no longer there are dropped; the gate looks results up by sha256."""
    folder = tmp_path / "w"
    a, b = make_wheel(folder, "a", "1.0"), make_wheel(folder, "b", "1.0")
    shas = {w: hashlib.sha256(w.read_bytes()).hexdigest() for w in (a, b)}
    target = record_results(folder, _run("good", {a: "pass", b: "pass"}))
    assert passing_wheels(target) == {a.name: shas[a], b.name: shas[b]}
    record_results(folder, _run("other", {b: "unknown"}))  # could not check b
    record_results(folder, _run("other", {}))  # a run over nothing in this folder
    assert passing_wheels(target) == {a.name: shas[a], b.name: shas[b]}
    assert read_results(target)[shas[b]]["runtime"]["python"] == "good"
    verdict = publish.verification_of([a, b], shas, report=None, allow_unverified=None,
                                      reporter=reporter)
    assert {v[0] for v in verdict.values()} == {"verify-abi"}
    # A verdict on the same bytes replaces the earlier one: the gate follows the latest.
    record_results(folder, _run("2.13", {b: "fail"}))
    assert passing_wheels(target) == {a.name: shas[a]}
    with pytest.raises(IndexPublishError, match="its latest result there is fail against 2.13"):
        publish.verification_of([b], shas, report=None, allow_unverified=None,
                                reporter=reporter)
    # b rebuilt (other bytes): its old result is dropped, a's stays.
    b2 = make_wheel(folder, "b", "1.0", extra=b"# rebuilt\n")
    record_results(folder, _run("good", {}))
    assert set(read_results(target)) == {shas[a]}
    with pytest.raises(IndexPublishError, match="no passing result for it"):
        publish.verification_of([b2], {b2: hashlib.sha256(b2.read_bytes()).hexdigest()},
                                report=None, allow_unverified=None, reporter=reporter)
    assert json.loads(target.read_text())["schema_version"] == 2
