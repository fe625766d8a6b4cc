"""The shared compile cache's URL handling, credential rules and reachability check, as a
user meets them: `build-wheels --dry-run` through the console script against a port where
nothing listens. The tests against a real redis-server are in
tests/integration/test_remote_cache_redis.py: the unit tier needs no program beyond
Python, git, patch and gcc."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from redis_server import free_port
from remote_cache_project import SECRET, dry_run, project

from vllm_wheels.build import remote_cache
from vllm_wheels.build.stack import load_stack
from vllm_wheels.errors import ConfigError

# ------------------------------------------------------------------ parsing, redaction


def test_redis_url_parts_and_redaction() -> None:
    r = remote_cache.parse(f"redis://:{SECRET}@cache.example:6380/2", "test")
    assert (r.backend, r.host, r.port) == ("redis", "cache.example", 6380)
    assert r.redacted == "redis://:***@cache.example:6380/2"
    env = r.sccache_env()
    # sccache 0.16 reads SCCACHE_REDIS_ENDPOINT; the password goes separately and unlogged.
    assert env["SCCACHE_REDIS_ENDPOINT"] == "redis://cache.example:6380"
    assert env["SCCACHE_REDIS_DB"] == "2"
    assert env["SCCACHE_MULTILEVEL_CHAIN"] == "disk,redis"
    assert SECRET not in json.dumps(env) and SECRET not in json.dumps(r.to_dict())
    assert r.secret_env() == {"SCCACHE_REDIS_PASSWORD": SECRET}
    user = remote_cache.parse(f"rediss://ci:{SECRET}@h", "test")
    assert user.redacted == "rediss://ci:***@h:6379" and user.port == 6379
    assert user.sccache_env()["SCCACHE_REDIS_USERNAME"] == "ci"
    plain = remote_cache.parse("redis://10.0.0.5:6379", "test")
    assert plain.redacted == "redis://10.0.0.5:6379" and plain.secret_env() == {}


def test_s3_and_gcs_pass_through() -> None:
    s3 = remote_cache.parse("s3://team-sccache/vllm", "test").sccache_env()
    assert s3["SCCACHE_BUCKET"] == "team-sccache" and s3["SCCACHE_S3_KEY_PREFIX"] == "vllm"
    assert s3["SCCACHE_MULTILEVEL_CHAIN"] == "disk,s3"
    gcs = remote_cache.parse("gs://team-sccache", "test").sccache_env()
    assert gcs["SCCACHE_GCS_BUCKET"] == "team-sccache" and gcs["SCCACHE_MULTILEVEL_CHAIN"] == \
        "disk,gcs"
    assert remote_cache.ping(remote_cache.parse("s3://b", "t")).reachable is None


@pytest.mark.parametrize(("url", "message"), [
    ("http://cache:6379", "not a remote compile cache URL"),
    ("redis://", "not a remote compile cache URL"),
    ("redis://h:notaport", "invalid port"),
    ("redis://h:6379/cache", "Redis database number"),
    (f"s3://key:{SECRET}@bucket", "carries credentials"),
])
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        remote_cache.parse(url, "test")
    assert message in err.value.what and SECRET not in err.value.render()


def test_precedence_flag_then_variable_then_stack() -> None:
    env = {remote_cache.ENV_VAR: "redis://from-env:1"}
    assert remote_cache.resolve("redis://stack:1", None, {}).host == "stack"  # type: ignore[union-attr]
    assert remote_cache.resolve("redis://stack:1", None, env).host == "from-env"  # type: ignore[union-attr]
    assert remote_cache.resolve("redis://stack:1", "redis://flag:1", env).host == "flag"  # type: ignore[union-attr]
    assert remote_cache.resolve("redis://stack:1", "none", env) is None
    assert remote_cache.resolve("", None, {}) is None


# ------------------------------------------------------------- credentials: exit 2


def test_password_in_the_stack_is_exit_2(tmp_path: Path) -> None:
    stack = project(tmp_path, f'compile_cache_remote = "redis://:{SECRET}@127.0.0.1:6379"')
    with pytest.raises(ConfigError):
        load_stack(stack)
    result = dry_run(tmp_path, stack)
    assert result.returncode == 2, result.stderr
    assert "carries a password (redis://:***@127.0.0.1:6379)" in result.stderr
    assert remote_cache.ENV_VAR in result.stderr  # the fix names where the password goes
    assert SECRET not in result.stderr + result.stdout


def test_password_on_the_command_line_is_exit_2(tmp_path: Path) -> None:
    result = dry_run(tmp_path, project(tmp_path), "--compile-cache-remote",
                     f"redis://:{SECRET}@127.0.0.1:6379")
    assert result.returncode == 2, result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_stack_remote_without_sccache_is_exit_2(tmp_path: Path) -> None:
    stack = project(tmp_path, 'compile_cache_remote = "redis://127.0.0.1:6379"')
    stack.write_text(stack.read_text().replace('compile_cache = "sccache"',
                                               'compile_cache = "ccache"'))
    result = dry_run(tmp_path, stack)
    assert result.returncode == 2 and "needs compile_cache" in result.stderr


def test_the_remote_does_not_change_the_stack_digest(tmp_path: Path) -> None:
    plain = load_stack(project(tmp_path)).digest()
    stack = tmp_path / "stack.toml"
    stack.write_text(stack.read_text().replace(
        'compile_cache = "sccache"', 'compile_cache = "sccache"\n'
                                     'compile_cache_remote = "redis://10.0.0.5:6379"'))
    assert load_stack(stack).build.compile_cache_remote == "redis://10.0.0.5:6379"
    assert load_stack(stack).digest() == plain


# -------------------------------------------------------------- reachability, the plan


def test_unreachable_remote_warns_and_builds_local(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    result = dry_run(tmp_path, project(tmp_path), "--compile-cache-remote",
                     f"redis://127.0.0.1:{closed}")
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert f"compile cache remote redis://127.0.0.1:{closed}" in out
    assert "is unreachable" in out and "building with the local cache only" in out
    assert "backend local" in result.stdout and "UNREACHABLE (local only)" in result.stdout
    cc = json.loads((tmp_path / "plan.json").read_text())["toolchain"]["compile_cache"]
    assert cc["backend"] == "local" and cc["remote"]["reachable"] is False
    steps_env = json.loads((tmp_path / "plan.json").read_text())["packages"][0]["steps"][0]["env"]
    assert "SCCACHE_REDIS_ENDPOINT" not in steps_env


def test_flag_is_refused_with_in_docker(repo_root: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "vllm_wheels", "build-wheels", "--stack",
                             "build/stacks/ci-cuda13.toml", "--in-docker", "--dry-run",
                             "--compile-cache-remote", "redis://10.0.0.5:6379"],
                            cwd=repo_root, text=True, capture_output=True, timeout=120,
                            check=False)
    assert result.returncode == 2, result.stderr
    assert "--compile-cache-remote does not apply with --in-docker" in result.stderr


# sccache's own statistics (--show-stats --stats-format json, "stats"), the parts read.
def sccache_stats(read: int = 0, write: int = 0, timeouts: int = 0) -> dict[str, object]:
    return {"cache_hits": {"counts": {"C/C++": 3}}, "cache_misses": {"counts": {"CUDA": 2}},
            "cache_errors": {"counts": {"CUDA": read} if read else {}, "adv_counts": {}},
            "cache_write_errors": write, "cache_timeouts": timeouts}


def test_sccache_error_counters() -> None:
    from vllm_wheels.build.toolchain import sccache_errors

    assert sccache_errors(sccache_stats()) == {"read": 0, "write": 0, "timeouts": 0}
    assert sccache_errors(sccache_stats(2, 5, 1)) == {"read": 2, "write": 5, "timeouts": 1}
    assert sccache_errors({}) == {"read": 0, "write": 0, "timeouts": 0}
    # sccache 0.16 with disk,redis and Redis gone: only the remote level counts its failed
    # writes (what it printed in this case, trimmed); the local level's are not remote.
    levels = {**sccache_stats(), "multi_level": [
        {"name": "L0 (disk)", "hits": 1, "misses": 3, "writes": 3, "write_failures": 5},
        {"name": "L1 (redis)", "hits": 0, "misses": 3, "writes": 1, "write_failures": 2}]}
    assert sccache_errors(levels) == {"read": 0, "write": 2, "timeouts": 0}


def test_remote_that_failed_during_the_build_warns() -> None:
    resolved = remote_cache.resolve("", None, {remote_cache.ENV_VAR: "redis://:pw@127.0.0.1:7/0"})
    assert resolved is not None
    remote = dataclasses.replace(resolved, reachable=True)
    stats = {"hits": 3, "misses": 2, "errors": {"read": 0, "write": 4, "timeouts": 0}}
    # The remote worked all along: nothing to say.
    assert remote_cache.after_build(remote, {**stats, "errors": {}}, remote) == ""
    # Write errors during the build: what, why, fix; the password is never shown.
    text = remote_cache.after_build(remote, stats, remote)
    assert "failed during the build" in text and "4 cache write errors" in text
    assert "fell back to the local compile cache" in text and "2 compiled here" in text
    assert "check the server" in text and ":pw@" not in text
    # No errors counted, but the remote does not answer after the build.
    gone = dataclasses.replace(remote, reachable=False, detail="ConnectionRefusedError")
    text = remote_cache.after_build(remote, {**stats, "errors": {}}, gone)
    assert "does not answer after the build (ConnectionRefusedError)" in text
    # Unreachable when the plan was made: warned about then, not again.
    assert remote_cache.after_build(gone, stats, gone) == ""


def test_guard_watches_only_redis_and_a_failing_switch_is_reported() -> None:
    s3 = remote_cache.parse("s3://bucket/prefix", "test")
    with remote_cache.RemoteGuard(s3, lambda: None, interval_s=0.01) as guard:
        pass
    assert guard.remote is None and guard.fallback is None
    # Nothing listens on this port: the guard switches, and the switch's error is kept.
    dead = remote_cache.parse(f"redis://127.0.0.1:{free_port()}", "test")

    def broken() -> None:
        raise RuntimeError("sccache --start-server failed")
    with remote_cache.RemoteGuard(dead, broken, interval_s=0.02, failures=1) as guard:
        import time
        deadline = time.monotonic() + 10
        while guard.fallback is None and time.monotonic() < deadline:
            time.sleep(0.02)
    assert guard.fallback is not None and guard.fallback.stats_before is None
    assert guard.error == "RuntimeError: sccache --start-server failed"


def test_two_servers_statistics_add_up() -> None:
    from vllm_wheels.build.toolchain import add_compile_cache_stats

    first = {"hits": 3, "misses": 2, "by_language": {"CUDA": {"hits": 1, "misses": 2}},
             "errors": {"read": 0, "write": 1, "timeouts": 0}}
    second = {"hits": 0, "misses": 4, "by_language": {"CUDA": {"hits": 0, "misses": 1},
                                                     "C/C++": {"hits": 0, "misses": 3}},
              "errors": {"read": 0, "write": 0, "timeouts": 0}}
    total = add_compile_cache_stats(first, second)
    assert total == {"hits": 3, "misses": 6,
                     "by_language": {"CUDA": {"hits": 1, "misses": 3},
                                     "C/C++": {"hits": 0, "misses": 3}},
                     "errors": {"read": 0, "write": 1, "timeouts": 0}}
    assert add_compile_cache_stats(None, second) == second
    assert add_compile_cache_stats(first, None) == first


def test_sccaches_own_redis_variable_is_named_in_a_warning_and_kept_from_sccache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SCCACHE_REDIS_ENDPOINT set by the user: the pipeline chooses sccache's backend
    itself, so the plan warns that it is not used (and how to use it), and the compiles'
    and local server's environment drops it (else sccache would use that server unseen)."""
    endpoint = f"redis://127.0.0.1:{free_port()}"
    result = dry_run(tmp_path, project(tmp_path), env={"SCCACHE_REDIS_ENDPOINT": endpoint})
    assert result.returncode == 0, result.stderr
    assert f"WARNING: SCCACHE_REDIS_ENDPOINT={endpoint} is set, but sccache's backend is " \
           "chosen by the pipeline: it is not used (this build uses the local compile cache " \
           "only)" in result.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    check = next(c for c in plan["toolchain"]["checks"]
                 if c["name"] == "compile cache remote (sccache's variables)")
    assert check["status"] == "warn"
    assert f"{remote_cache.ENV_VAR}={endpoint}" in check["fix"]
    env = plan["packages"][0]["steps"][0]["env"]
    assert "SCCACHE_REDIS_ENDPOINT" in env and env["SCCACHE_REDIS_ENDPOINT"] is None
    # With a remote of the pipeline's, the server gets that one, never the user's.
    from vllm_wheels.build.toolchain import CompileCache

    monkeypatch.setenv("SCCACHE_REDIS_ENDPOINT", endpoint)
    remote = remote_cache.parse("redis://10.0.0.5:6379", "test")
    cc = CompileCache("sccache", tmp_path / "sccache", tmp_path / "cache" / "sccache", remote)
    assert cc.env(tmp_path)["SCCACHE_REDIS_ENDPOINT"] is None
    assert cc.server_env(tmp_path)["SCCACHE_REDIS_ENDPOINT"] == "redis://10.0.0.5:6379"
    warning, _fix = remote_cache.user_sccache_warning(remote)
    assert "this build's remote is redis://10.0.0.5:6379 (from test)" in warning
