"""Wheel post-processing: give a built wheel its local version label, its runtime pins on
the exact torch it was built with (and on the packages built with it that it requires,
e.g. vLLM on FlashInfer), the build manifest, extra files (e.g.
FlashInfer's AOT kernels) and a regenerated RECORD; written to a temporary file and then
renamed, so no reader ever sees a half-written wheel.

The zip is written reproducibly: members in a fixed order (package files sorted, then the
.dist-info files sorted, RECORD last), one timestamp (SOURCE_DATE_EPOCH, else 1980-01-01),
modes reduced to 0644/0755, so equal contents give a byte-identical wheel whatever order
the build tool wrote its zip in, when, or under which umask.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import io
import json
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from ..cache import remove, temp_sibling

MANIFEST_NAME = "vllm_wheels_build.json"
# 2: only the build's inputs; what varies per build (duration, host, jobs, compile cache
# statistics) moved to build-summary.json, so a rebuild gives the same bytes.
MANIFEST_SCHEMA_VERSION = 2
# The earliest time a zip entry can hold (1980-01-01 00:00:00 UTC): the default member
# timestamp, a constant so that no build's wall clock reaches the wheel.
ZIP_EPOCH = 315532800


def zip_date_time(environ: Mapping[str, str] | None = None) -> tuple[int, int, int, int, int, int]:
    """The timestamp of every member: SOURCE_DATE_EPOCH (the reproducible-builds
    convention) when set, else ZIP_EPOCH; earlier values are raised to ZIP_EPOCH."""
    env = os.environ if environ is None else environ
    raw = env.get("SOURCE_DATE_EPOCH", "").strip()
    try:
        epoch = int(raw) if raw else ZIP_EPOCH
    except ValueError:
        from ..errors import ConfigError

        raise ConfigError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer",
                          why="it is the timestamp written into every wheel member",
                          fix="set it to seconds since 1970 (e.g. `git log -1 --format=%ct`) "
                              "or unset it") from None
    year, month, day, hour, minute, second = time.gmtime(max(epoch, ZIP_EPOCH))[:6]
    return (year, month, day, hour, minute, second)


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _member_order(arcname: str) -> tuple[int, str]:
    """Package files first, then .dist-info (as `wheel` writes them), RECORD last."""
    top, _, rest = arcname.partition("/")
    if top.endswith(".dist-info"):
        return (2, arcname) if rest == "RECORD" else (1, arcname)
    return (0, arcname)


@dataclass(frozen=True)
class WheelInfo:
    path: Path
    name: str
    version: str
    tags: str  # e.g. "cp38-abi3-linux_x86_64"


def wheel_info(path: Path) -> WheelInfo:
    name, version, _build, _tags = parse_wheel_filename(path.name)
    tag_text = "-".join(path.name[:-4].split("-")[-3:])
    return WheelInfo(path, str(name), str(version), tag_text)


def record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def with_local_label(version: str, label: str) -> str:
    """0.11.2 -> 0.11.2+cu128.torch290.sm120; an existing label is replaced."""
    base = Version(version).public
    return f"{base}+{label}" if label else base


def _rewrite_requirements(metadata: str, replace: Mapping[str, str]) -> str:
    """Replace the Requires-Dist lines of the given projects (keeping markers/extras)."""
    wanted = {canonicalize_name(k): v for k, v in replace.items()}
    out, seen = [], set()
    headers, _, body = metadata.partition("\n\n")
    for line in headers.splitlines():
        if line.startswith("Requires-Dist:"):
            text = line.split(":", 1)[1].strip()
            try:
                req = Requirement(text)
            except InvalidRequirement:
                out.append(line)
                continue
            name = canonicalize_name(req.name)
            if name in wanted:
                seen.add(name)
                marker = f" ; {req.marker}" if req.marker else ""
                extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
                out.append(f"Requires-Dist: {req.name}{extras}{wanted[name]}{marker}")
                continue
        out.append(line)
    for name, spec in wanted.items():
        if name not in seen:
            out.append(f"Requires-Dist: {name}{spec}")
    return "\n".join(out) + "\n\n" + body if body else "\n".join(out) + "\n"


def declared_names(requirements: Iterable[str]) -> set[str]:
    """The canonical project names of Requires-Dist lines (any marker or extra)."""
    names: set[str] = set()
    for text in requirements:
        try:
            names.add(canonicalize_name(Requirement(text).name))
        except InvalidRequirement:
            continue
    return names


def select_pins(declared: Iterable[str], always: Mapping[str, str],
                built: Mapping[str, str]) -> dict[str, str]:
    """The runtime pins of one wheel: `always` (torch, its companions: what every wheel
    of the stack is built against), plus each package built earlier in the stack that the
    wheel itself declares in Requires-Dist (`declared`), tightened to ==its version. A built
    package the wheel does not require is not added: a FlashInfer wheel must not pull in
    whatever happened to be built before it. `built` maps names to the exact specifier."""
    requires = declared_names(declared)
    pins: dict[str, str] = {canonicalize_name(k): v for k, v in always.items()}
    for name, spec in built.items():
        if canonicalize_name(name) in requires:
            pins[canonicalize_name(name)] = spec
    return pins


def _set_header(text: str, key: str, value: str) -> str:
    pattern = re.compile(rf"^{re.escape(key)}: .*$", re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(f"{key}: {value}", text, count=1)
    return text.rstrip("\n") + f"\n{key}: {value}\n"


def rewrite_wheel(
    wheel: Path,
    out_dir: Path,
    *,
    label: str,
    pins: Mapping[str, str],
    manifest: Mapping[str, object],
    add_files: Mapping[str, Path] | None = None,
    platform_tag: str | None = None,
) -> Path:
    """Write the post-processed wheel into out_dir (atomically) and return its path."""
    info = wheel_info(wheel)
    new_version = with_local_label(info.version, label)
    dist = re.sub(r"[-_.]+", "_", info.name).lower()
    tags = info.tags
    if platform_tag:
        tags = "py3-none-" + platform_tag if tags.endswith("-none-any") else \
            re.sub(r"-[^-]+$", "-" + platform_tag, tags)
    target = out_dir / f"{dist}-{new_version}-{tags}.whl"
    tmp = temp_sibling(target)
    out_dir.mkdir(parents=True, exist_ok=True)
    date_time = zip_date_time()
    # arcname -> (reads the bytes, mode, RECORD row). Members are read again when written
    # instead of held: a vLLM wheel is hundreds of MB.
    members: dict[str, tuple[Callable[[], bytes], int, tuple[str, str, str]]] = {}
    try:
        with zipfile.ZipFile(wheel) as src:
            names = src.namelist()
            old_info = next(n.split("/")[0] for n in names
                            if n.split("/")[0].endswith(".dist-info") and n.endswith("/METADATA"))
            new_info = f"{dist}-{new_version}.dist-info"

            def put(arcname: str, read: Callable[[], bytes], mode: int) -> None:
                data = read()
                # Only "executable or not" survives: the builder's umask is no input.
                members[arcname] = (read, 0o755 if mode & 0o111 else 0o644,
                                    (arcname, record_hash(data), str(len(data))))

            for item in src.infolist():
                if item.is_dir():
                    continue
                name = item.filename
                top, _, rest = name.partition("/")
                if top == old_info:
                    if rest in ("RECORD", "RECORD.jws", "RECORD.p7s", MANIFEST_NAME):
                        continue
                    name = f"{new_info}/{rest}"
                mode = item.external_attr >> 16
                if name == f"{new_info}/METADATA":
                    text = _set_header(src.read(item).decode("utf-8"), "Version", new_version)
                    put(name, _const(_rewrite_requirements(text, pins).encode("utf-8")), mode)
                elif name == f"{new_info}/WHEEL" and platform_tag:
                    text = src.read(item).decode("utf-8")
                    text = re.sub(r"^Tag: .*\n", "", text, flags=re.MULTILINE)
                    text = _set_header(text, "Root-Is-Purelib", "false")
                    text = text.rstrip("\n") + f"\nTag: {tags}\n"
                    put(name, _const(text.encode("utf-8")), mode)
                else:
                    put(name, functools.partial(src.read, item), mode)
            for arcname, path in (add_files or {}).items():
                put(arcname, path.read_bytes, path.stat().st_mode)
            put(f"{new_info}/{MANIFEST_NAME}",
                _const((json.dumps({**manifest, "schema_version": MANIFEST_SCHEMA_VERSION},
                                   indent=2, sort_keys=True) + "\n").encode()), 0o644)
            ordered = sorted(members, key=_member_order)
            record_name = f"{new_info}/RECORD"
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerows(members[n][2] for n in ordered)
            writer.writerow((record_name, "", ""))
            members[record_name] = (_const(buf.getvalue().encode()), 0o644, ("", "", ""))
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
                for arcname in [*ordered, record_name]:
                    read, mode, _row = members[arcname]
                    zi = zipfile.ZipInfo(arcname, date_time=date_time)
                    zi.compress_type = zipfile.ZIP_DEFLATED
                    # Unix, whatever host writes it: external_attr holds a Unix mode.
                    zi.create_system = 3
                    zi.external_attr = mode << 16
                    dst.writestr(zi, read())
    except BaseException:
        remove(tmp)
        raise
    tmp.replace(target)
    return target


def read_manifest(wheel: Path) -> dict[str, object] | None:
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.endswith(f".dist-info/{MANIFEST_NAME}"):
                data: dict[str, object] = json.loads(zf.read(name))
                return data
    return None


# The wheel spec: RECORD's hashes are sha256 or stronger; md5 and sha1 are not allowed.
RECORD_HASHES = frozenset({"sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512",
                           "blake2b", "blake2s"})


def verify_record(wheel: Path) -> list[str]:
    """Problems with a wheel's RECORD, each naming the member (empty list = every member
    listed, with a sha256-or-stronger hash and a size that match its bytes). RECORD's own
    row and the signature files (RECORD.jws, RECORD.p7s) are excepted, as the wheel spec
    says. Parsed and checked by PyPA's `installer` (WheelFile.validate_record: csv rows,
    every member, hash and size), the library installers use, so this check and theirs
    read RECORD the same way; on top of it, weak hash algorithms are refused."""
    from installer.records import parse_record_file
    from installer.sources import WheelFile

    problems: list[str] = []
    try:
        with WheelFile.open(wheel) as source:
            try:
                source.validate_record(validate_contents=True)
            except source.validation_error as exc:
                prefix = f"In {wheel}, "
                problems += [issue.removeprefix(prefix) for issue in exc.issues]
            try:
                rows = list(parse_record_file(source.read_dist_info("RECORD").splitlines()))
            except (KeyError, ValueError):
                rows = []  # already reported by validate_record
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return [f"not a readable wheel: {exc}"]
    for path, hash_, _size in rows:
        algorithm = hash_.partition("=")[0]
        if hash_ and algorithm not in RECORD_HASHES:
            problems.append(f"{path}: RECORD hashes it with {algorithm}, which the wheel spec "
                            "does not allow (sha256 or stronger)")
    return problems


def requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.split("\n\n")[0].splitlines()
            if line.startswith("Requires-Dist:")]

