"""The shared compile cache against a real Redis (Debian's redis-server on a free loopback
port, tests/redis_server.py; .ci/run installs it): a reachable remote from the
environment (password redacted everywhere), the plan of a reachable remote, the trees
moved to the machine-wide build root, and the guard switching to the local cache once
the server stops. Moved here from tests/unit: the unit tier needs no redis-server."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from redis_server import redis_server
from remote_cache_project import SECRET, dry_run, logs, project

from vllm_wheels.build import remote_cache


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
