"""The shared compile cache's URL handling, credential rules and reachability check, as a
user meets them: `build-wheels --dry-run` through the console script against a real
redis-server on loopback (or a port where nothing listens)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis_server import free_port, redis_server
from tiny_stacks import stack_toml

from vllm_wheels.build import remote_cache
from vllm_wheels.build.stack import load_stack
from vllm_wheels.errors import ConfigError

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
SECRET = "hunter2-not-for-logs"


def project(root: Path, build_extra: str = "") -> Path:
    (root / "pkg").mkdir()
    (root / "pkg" / "setup.py").write_text(
        'from setuptools import setup\nsetup(name="pkg", version="0.1.0")\n')
    stack = root / "stack.toml"
    stack.write_text(stack_toml("rc", """
[packages.pkg]
source = { path = "pkg", version = "0.1.0" }
""", python=PY, build=f'compile_cache = "sccache"\n{build_extra}\n'))
    return stack


def dry_run(root: Path, stack: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    merged = {k: v for k, v in os.environ.items() if k != remote_cache.ENV_VAR}
    merged.update(env or {})
    return subprocess.run([sys.executable, "-m", "vllm_wheels", "build-wheels", "--stack",
                           str(stack), "--cache-dir", str(root / "cache"), "--dry-run",
                           "--json", str(root / "plan.json"), *args],
                          cwd=root, env=merged, text=True, capture_output=True, timeout=120,
                          check=False)


def logs(root: Path) -> str:
    return "".join(p.read_text() for p in (root / "cache" / "logs").glob("*.log"))


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


def test_reachable_remote_from_the_environment_is_used_and_redacted(tmp_path: Path) -> None:
    with redis_server(password=SECRET) as port:
        result = dry_run(tmp_path, project(tmp_path), env={
            remote_cache.ENV_VAR: f"redis://:{SECRET}@127.0.0.1:{port}"})
        wrong = dry_run(tmp_path, tmp_path / "stack.toml", env={
            remote_cache.ENV_VAR: f"redis://:wrong@127.0.0.1:{port}"})
    assert result.returncode == 0, result.stderr
    assert "backend redis" in result.stdout
    assert f"remote: redis://:***@127.0.0.1:{port} from {remote_cache.ENV_VAR}: reachable" \
        in result.stdout
    plan_text = (tmp_path / "plan.json").read_text()
    for where in (result.stdout, result.stderr, logs(tmp_path)):
        assert SECRET not in where
    # The JSON was rewritten by the second run: check the first run's facts from stdout,
    # the second's (wrong password) from its JSON.
    plan = json.loads(plan_text)
    assert plan["toolchain"]["compile_cache"]["remote"]["reachable"] is False
    assert "AUTH refused" in plan["toolchain"]["compile_cache"]["remote"]["detail"]
    assert wrong.returncode == 0 and "backend local" in wrong.stdout


def test_plan_json_of_a_reachable_remote(tmp_path: Path) -> None:
    with redis_server() as port:
        result = dry_run(tmp_path, project(tmp_path), "--compile-cache-remote",
                         f"redis://127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    cc = plan["toolchain"]["compile_cache"]
    assert cc["tool"] == "sccache" and cc["backend"] == "redis"
    assert cc["remote"] == {"url": f"redis://127.0.0.1:{port}", "backend": "redis",
                            "source": remote_cache.CLI_FLAG, "reachable": True,
                            "detail": cc["remote"]["detail"]}
    assert cc["remote"]["detail"].startswith("PONG in ")
    # The sccache server the pipeline starts has the remote; the compiles do not (a server
    # one of them starts after the guard stopped the first is local only), and a compile
    # whose server goes away compiles locally.
    assert cc["server_env"]["SCCACHE_REDIS_ENDPOINT"] == f"redis://127.0.0.1:{port}"
    assert cc["server_env"]["SCCACHE_MULTILEVEL_CHAIN"] == "disk,redis"
    env = plan["packages"][0]["steps"][0]["env"]
    assert "SCCACHE_REDIS_ENDPOINT" not in env and "SCCACHE_MULTILEVEL_CHAIN" not in env
    assert env["SCCACHE_IGNORE_SERVER_IO_ERROR"] == "1"
    assert any(c["name"] == "compile cache remote" and c["status"] == "ok"
               for c in plan["toolchain"]["checks"])


def test_flag_is_refused_with_in_docker(repo_root: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "vllm_wheels", "build-wheels", "--stack",
                             "build/stacks/ci-cuda13.toml", "--in-docker", "--dry-run",
                             "--compile-cache-remote", "redis://10.0.0.5:6379"],
                            cwd=repo_root, text=True, capture_output=True, timeout=120,
                            check=False)
    assert result.returncode == 2, result.stderr
    assert "--compile-cache-remote does not apply with --in-docker" in result.stderr


def test_a_remote_puts_the_trees_under_the_build_root(tmp_path: Path,
                                                      own_build_root: Path) -> None:
    """With a remote compile cache every builder must compile at the same paths (nvcc puts
    the real path of each .cu into what sccache hashes): the trees leave the cache dir for
    the machine-wide build root; without one they stay where they were."""
    stack = project(tmp_path)
    with redis_server() as port:
        shared = dry_run(tmp_path, stack, "--compile-cache-remote", f"redis://127.0.0.1:{port}")
    assert shared.returncode == 0, shared.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    tree = Path(plan["packages"][0]["tree"])
    assert tree.parent == own_build_root / "src" and (tree / "setup.py").is_file()
    assert plan["paths"]["trees"] == str(own_build_root / "src") and plan["paths"]["trees_shared"]
    assert f"Source trees: {own_build_root / 'src'} (machine-wide build root" in shared.stdout
    local = dry_run(tmp_path, stack, "--compile-cache-remote", "none")
    assert local.returncode == 0, local.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert Path(plan["packages"][0]["tree"]).parent == tmp_path / "cache" / "src"
    assert plan["paths"]["trees_shared"] is False


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


def test_guard_switches_to_local_once_when_redis_stops() -> None:
    """A real Redis, watched by the guard: while it answers nothing happens; after SHUTDOWN
    the guard calls its switch exactly once and keeps the switched-away server's stats."""
    import threading
    import time

    from redis_server import redis_command

    calls: list[float] = []
    before = {"hits": 1, "misses": 4}

    def switch() -> dict[str, object]:
        calls.append(time.monotonic())
        return before

    with redis_server() as port:
        remote = dataclasses.replace(
            remote_cache.parse(f"redis://127.0.0.1:{port}", "test"), reachable=True)
        guard = remote_cache.RemoteGuard(remote, switch, interval_s=0.05, failures=2)
        with guard:
            time.sleep(0.5)  # about ten pings, all answered
            assert calls == [] and guard.fallback is None
            redis_command(port, "SHUTDOWN", "NOSAVE")
            deadline = time.monotonic() + 10
            while not calls and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # would be a second switch if the guard kept watching
    assert len(calls) == 1
    assert guard.fallback is not None and guard.fallback.stats_before == before
    assert "Refused" in guard.fallback.detail or "Error" in guard.fallback.detail
    assert not any(t.name == "remote-cache-guard" for t in threading.enumerate())
    text = remote_cache.after_build(remote, {"hits": 2, "misses": 5, "errors": {}},
                                    guard.fallback and dataclasses.replace(
                                        remote, reachable=False, detail="gone"),
                                    guard.fallback)
    assert "stopped answering" in text and "restarted with the local cache only" in text
    assert "does not answer after the build" not in text


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
