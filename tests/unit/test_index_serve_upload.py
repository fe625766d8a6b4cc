"""Wheel index: PEP 691 Accept negotiation, the printed install commands, and the upload
configuration (credentials only from the environment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_wheels.errors import ConfigError
from vllm_wheels.index import serve, upload
from vllm_wheels.index.store import FileRecord, IndexState

JSON = "application/vnd.pypi.simple.v1+json"
HTML = "application/vnd.pypi.simple.v1+html"


@pytest.mark.parametrize(("accept", "expected"), [
    (None, ("html", "text/html; charset=utf-8")),
    ("", ("html", "text/html; charset=utf-8")),
    (JSON, ("json", JSON)),
    ("application/vnd.pypi.simple.latest+json", ("json", JSON)),
    (HTML, ("html", HTML)),
    ("application/vnd.pypi.simple.latest+html", ("html", HTML)),
    (f"{JSON}, {HTML};q=0.1, text/html;q=0.01", ("json", JSON)),  # pip, uv
    (f"text/html, {JSON};q=0.9", ("html", "text/html; charset=utf-8")),
    (f"{JSON};q=0, text/html", ("html", "text/html; charset=utf-8")),
    ("*/*", ("html", "text/html; charset=utf-8")),  # generic clients get the fallback
    (f"*/*, {JSON};q=0.5", ("html", "text/html; charset=utf-8")),
    (f"*/*;q=0.1, {HTML}", ("html", HTML)),
    ("TEXT/HTML", ("html", "text/html; charset=utf-8")),
    ("image/png", None),
    (f"{JSON};q=0", None),
    ("application/json", None),  # PEP 691 uses its own media types only
])
def test_negotiate(accept: str | None, expected: tuple[str, str] | None) -> None:
    assert serve.negotiate(accept) == expected


def _record(project: str, version: str, yanked: str | None = None) -> FileRecord:
    return FileRecord(filename=f"{project}-{version}-py3-none-any.whl", project=project,
                      version=version, sha256="0" * 64, size=1, upload_time="t",
                      origin="built", verification="verify-abi", verification_detail="",
                      yanked=yanked)


def test_install_commands_pin_vllm_exactly_and_skip_yanked() -> None:
    records = [_record("flashinfer-python", "0.5.2+cu128.torch290.sm120"),
               _record("vllm", "0.11.2+cu128.torch290.sm120"),
               _record("vllm", "0.11.3+cu128.torch290.sm120", yanked="broken")]
    state = IndexState(1, {r.filename: r for r in records})
    pip_cmd, uv_cmd = serve.install_commands("http://h:1/simple/", state)
    assert pip_cmd.startswith('pip install "vllm==0.11.2+cu128.torch290.sm120" '
                              "--index-url http://h:1/simple/")
    assert uv_cmd == 'uv pip install "vllm==0.11.2+cu128.torch290.sm120" --index http://h:1/simple/'
    assert "PACKAGE==" in serve.install_commands("u", IndexState())[0]


def test_upload_config_rejects_credentials_and_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "index.toml"
    config.write_text('schema_version = 1\n[upload]\nurl = "https://idx.example/"\n'
                      'password = "hunter2"\n')
    with pytest.raises(ConfigError, match="credential") as info:
        upload.load_upload_config(config)
    assert "UV_PUBLISH_PASSWORD" in info.value.fix
    config.write_text('[upload]\nurl = "https://idx.example/"\nchek_url = "x"\n')
    with pytest.raises(ConfigError, match="unknown key") as info:
        upload.load_upload_config(config)
    assert "check_url" in info.value.fix
    config.write_text('[upload]\nurl = "ftp://idx"\n')
    with pytest.raises(ConfigError, match="http"):
        upload.load_upload_config(config)


def test_upload_commands(tmp_path: Path) -> None:
    config = tmp_path / "index.toml"
    config.write_text('[upload]\nurl = "https://idx.example/up/"\n'
                      'check_url = "https://idx.example/simple/"\n')
    loaded = upload.load_upload_config(config)
    assert loaded == upload.UploadConfig(url="https://idx.example/up/", tool="uv",
                                         check_url="https://idx.example/simple/")
    cmd = upload.upload_command(loaded, [Path("a.whl")])
    assert cmd[1:] == ["publish", "--trusted-publishing", "never", "--publish-url",
                       "https://idx.example/up/", "--check-url", "https://idx.example/simple/",
                       "a.whl"]
    twine = upload.upload_command(upload.UploadConfig(url="https://x/", tool="twine"),
                                  [Path("a.whl")])
    assert twine[1:] == ["-m", "twine", "upload", "--non-interactive", "--skip-existing",
                         "--repository-url", "https://x/", "a.whl"]
    assert not any("password" in part.lower() for part in cmd + twine)
