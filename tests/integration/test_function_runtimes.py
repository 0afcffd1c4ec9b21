"""The three function runtimes with real processes (no NATS): what each outcome becomes,
timeouts that kill, crashes, memory caps, a clean environment, output floods, run_as."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from vebus.bus.cloudevent import CloudEvent
from vebus.config import parse_config
from vebus_functions.host import Function, FunctionHost
from vebus_functions.runtime import Call, Outcome

pytestmark = pytest.mark.integration

#: set in the test process (so in the functions host's own environment): never in a worker
SERVICE_ONLY = {"NATS_PASSWORD": "nats-pw-of-the-service", "VEBUS_NATS_PASSWORD": "svc-pw-2"}

HANDLER = textwrap.dedent(
    """
    import os, sys, time
    from vebus_functions import Reject, RetryLater

    def handle(event, ctx):
        what = event.data["what"]
        print("handling", what, "token", ctx.secrets.get("TOKEN"))
        if what == "raise":
            raise ValueError("boom " + event.id)
        if what == "reject":
            raise Reject("not for me")
        if what == "retry":
            raise RetryLater("busy", after=7)
        if what == "crash":
            print("about to die", flush=True)
            os.kill(os.getpid(), 9)
        if what == "hang":
            time.sleep(600)
        if what == "grow":
            hog = bytearray(200 * 1024 * 1024)
            time.sleep(5)
        if what == "flood":
            for i in range(200_000):
                print("x" * 100, i)
            return None
        if what == "env":
            return {"env": dict(os.environ), "uid": os.getuid()}
        ctx.reply({"second": True}, type="com.example.Second.v0")
        return {"seen": event.id}

    async def ahandle(event, ctx):
        import asyncio
        await asyncio.sleep(0.01)
        return {"async": event.id}
    """
)


def event(what: str, ident: str = "1") -> CloudEvent:
    return CloudEvent(
        id=ident, source="https://vc/sdk", type="com.example.Test.v0",
        data=json.dumps({"what": what}).encode(),
    )  # fmt: skip


@pytest.fixture
async def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FunctionHost]:
    for key, value in SERVICE_ONLY.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "fn.py").write_text(HANDLER)
    (tmp_path / "cmd.sh").write_text(textwrap.dedent(
        """
        #!/bin/sh
        input=$(cat)
        case "$input" in
          *'"what":"ok"'*) echo "fine $TOKEN" >&2
            printf '{"type":"com.example.Cmd.v0","specversion":"1.0","data":{"got":true}}' ;;
          *'"what":"retry"'*) exit 75 ;;
          *'"what":"reject"'*) echo "bad input" >&2; exit 65 ;;
          *'"what":"fail"'*) echo "it went wrong" >&2; exit 3 ;;
          *'"what":"hang"'*) sleep 600 ;;
          *'"what":"text"'*) echo "just some output" ;;
          *) echo "unknown" >&2; exit 1 ;;
        esac
        """
    ).lstrip())  # fmt: skip
    os.chmod(tmp_path / "cmd.sh", 0o755)
    cfg = parse_config({
        "functions": [
            {"name": "py", "python": "fn.py:handle", "timeout": "2s", "workers": 2,
             "secrets": {"TOKEN": "s3cr3t-token-value"}},
            {"name": "apy", "python": "fn.py:ahandle", "workers": 1},
            {"name": "other", "python": "fn.py:handle", "workers": 1,
             "secrets": {"OTHER_SECRET": "other-functions-secret"}},
            {"name": "capped", "python": "fn.py:handle", "workers": 1, "memory_mb": 100},
            {"name": "broken", "python": "missing.py:handle", "workers": 1},
            {"name": "cmd", "command": ["./cmd.sh"], "timeout": "2s",
             "secrets": {"TOKEN": "cmd-token-value"}},
            {"name": "nocmd", "command": ["./does-not-exist"]},
        ]
    })  # fmt: skip
    h = FunctionHost(cfg, base_dir=tmp_path, log_lines=False)
    await h.start()
    yield h
    await h.close()


async def invoke(host: FunctionHost, name: str, ev: CloudEvent) -> Outcome:
    fn = host.get(name)
    assert fn is not None
    assert fn.runtime is not None
    return await fn.runtime.invoke(ev, Call(route="r"))


def replies(outcome: Outcome) -> list[Any]:
    return [json.loads(r) for r in outcome.replies]


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def pids(fn: Function | None) -> list[int]:
    assert fn is not None
    assert fn.runtime is not None
    return list(fn.runtime.state()["pids"])


async def test_python_outcomes_replies_and_tracebacks(host: FunctionHost) -> None:
    ok = await invoke(host, "py", event("ok", "e1"))
    assert ok.status == "done"
    assert replies(ok) == [
        {"specversion": "1.0", "data": {"seen": "e1"}},
        {"specversion": "1.0", "data": {"second": True}, "type": "com.example.Second.v0"},
    ]
    raised = await invoke(host, "py", event("raise", "e2"))
    assert (raised.status, raised.message) == ("error", "ValueError: boom e2")
    assert "Traceback" in (raised.detail or "")
    assert 'raise ValueError("boom " + event.id)' in (raised.detail or "")
    rejected = await invoke(host, "py", event("reject"))
    assert (rejected.status, rejected.message) == ("reject", "not for me")
    later = await invoke(host, "py", event("retry"))
    assert (later.status, later.retry_after) == ("retry", 7)
    asynchronous = await invoke(host, "apy", event("ok", "e3"))
    assert replies(asynchronous) == [{"specversion": "1.0", "data": {"async": "e3"}}]


async def test_a_crash_is_no_outcome_and_the_worker_is_replaced(host: FunctionHost) -> None:
    before = pids(host.get("py"))
    crashed = await invoke(host, "py", event("crash"))
    assert crashed.status == "crashed"
    assert "killed by signal SIGKILL" in crashed.message
    assert "about to die" in (crashed.detail or "")
    assert (await invoke(host, "py", event("ok"))).status == "done"
    for _ in range(50):
        if len(pids(host.get("py"))) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(set(pids(host.get("py"))) - set(before)) == 1, "one new worker"


async def test_a_hanging_function_is_killed_at_its_timeout(host: FunctionHost) -> None:
    started = time.monotonic()
    hung = await invoke(host, "py", event("hang"))
    took = time.monotonic() - started
    assert hung.status == "timeout"
    assert 1.9 < took < 20, took
    pid = int(hung.message.split("pid ")[1].split(")")[0])
    await asyncio.sleep(0.2)
    assert not alive(pid)
    assert (await invoke(host, "py", event("ok"))).status == "done"  # the other worker, or new


async def test_the_route_timeout_cancels_and_kills_the_worker(host: FunctionHost) -> None:
    before = set(pids(host.get("py")))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await invoke(host, "py", event("hang"))
    await asyncio.sleep(0.5)
    assert len(before - set(pids(host.get("py")))) == 1, "the busy worker was killed"


async def test_a_worker_over_its_memory_cap_is_killed(host: FunctionHost) -> None:
    grown = await invoke(host, "capped", event("grow"))
    assert grown.status == "crashed"
    assert "memory" in grown.message
    assert (await invoke(host, "capped", event("ok"))).status == "done"


async def test_a_worker_starts_with_a_clean_environment_and_no_service_secret(
    host: FunctionHost,
) -> None:
    (reply,) = replies(await invoke(host, "py", event("env")))
    env = reply["data"]["env"]
    assert env["TOKEN"] == "s3cr3t-token-value"
    assert env["VEBUS_FUNCTION"] == "py"
    leaked = [k for k, v in env.items() if v in SERVICE_ONLY.values() or "NATS" in k]
    assert not leaked, leaked
    assert "OTHER_SECRET" not in env
    assert set(env) <= {"PATH", "HOME", "LANG", "TZ", "PYTHONUNBUFFERED", "VEBUS_FUNCTION",
                        "TOKEN", "LC_CTYPE"}  # fmt: skip
    # the live processes too, as the kernel has them
    for pid in pids(host.get("py")):
        raw = environ_of(pid)
        assert b"NATS" not in raw
        assert all(v.encode() not in raw for v in SERVICE_ONLY.values())


async def test_output_is_bounded_and_secrets_are_masked(host: FunctionHost) -> None:
    fn = host.get("py")
    assert fn is not None
    started = time.monotonic()
    flood = asyncio.ensure_future(invoke(host, "py", event("flood")))
    # the service stays responsive: another function runs meanwhile, quickly
    t = time.monotonic()
    assert (await invoke(host, "apy", event("ok"))).status == "done"
    assert time.monotonic() - t < 5.0, "not held up by the flood (generous: a shared machine)"
    result = await flood
    assert result.status in ("done", "timeout")  # a flood slows only its own function
    assert fn.output.dropped > 0
    assert time.monotonic() - started < 30
    # the flood's last lines may still be read from another worker's pipe after it
    # returned, and push a newer line out of the last 500: invoke until one stays
    deadline = time.monotonic() + 20
    while True:
        await invoke(host, "py", event("ok"))
        texts = [line.text for line in fn.output.recent(500)]
        if any("token ***" in t for t in texts) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert any("token ***" in t for t in texts), texts[-5:]
    assert not any("s3cr3t-token-value" in t for t in texts)
    assert any("dropped" in t for t in texts)


async def test_a_function_that_does_not_load_is_unavailable(host: FunctionHost) -> None:
    out = await invoke(host, "broken", event("ok"))
    assert out.status == "unavailable"
    assert "missing.py" in out.message or "missing.py" in (out.detail or "")


async def test_command_exit_statuses_stdout_reply_and_timeout(host: FunctionHost) -> None:
    ok = await invoke(host, "cmd", event("ok"))
    assert ok.status == "done"
    assert replies(ok) == [
        {"type": "com.example.Cmd.v0", "specversion": "1.0", "data": {"got": True}}
    ]
    assert (await invoke(host, "cmd", event("retry"))).status == "retry"
    rejected = await invoke(host, "cmd", event("reject"))
    assert (rejected.status, rejected.detail) == ("reject", "bad input")
    failed = await invoke(host, "cmd", event("fail"))
    assert (failed.status, failed.message, failed.detail) == (
        "error", "the command exited 3", "it went wrong",
    )  # fmt: skip
    text = await invoke(host, "cmd", event("text"))
    assert (text.status, text.replies) == ("done", [])
    started = time.monotonic()
    hung = await invoke(host, "cmd", event("hang"))
    assert hung.status == "timeout"
    assert time.monotonic() - started < 6
    fn = host.get("cmd")
    assert fn is not None
    lines = [line.text for line in fn.output.recent(50)]
    assert "fine ***" in lines
    assert (await invoke(host, "nocmd", event("ok"))).status == "unavailable"


@pytest.mark.skipif(os.geteuid() != 0, reason="run_as needs the service to run as root")
async def test_run_as_starts_a_functions_processes_as_that_user(tmp_path: Path) -> None:
    """Every runtime starts its processes through the same spawner; a command shows it
    with the least to install (a Python worker needs its interpreter readable by the
    user, which a Python under /root is not)."""
    (tmp_path / "who.sh").write_text(
        '#!/bin/sh\nprintf \'{"uid": %s, "home": "%s"}\' "$(id -u)" "$HOME"\n'
    )
    os.chmod(tmp_path / "who.sh", 0o755)
    os.chmod(tmp_path, 0o755)
    nobody = pwd.getpwnam("nobody")
    cfg = parse_config({"functions": [
        {"name": "who", "command": ["./who.sh"], "run_as": "nobody"}
    ]})  # fmt: skip
    h = FunctionHost(cfg, base_dir=tmp_path, log_lines=False)
    await h.start()
    try:
        (reply,) = replies(await invoke(h, "who", event("ok")))
        assert reply["uid"] == nobody.pw_uid
    finally:
        await h.close()


def test_run_as_an_unknown_user_is_a_problem_of_that_function(tmp_path: Path) -> None:
    cfg = parse_config({"functions": [
        {"name": "who", "command": ["true"], "run_as": "no-such-user-here"}
    ]})  # fmt: skip
    h = FunctionHost(cfg, base_dir=tmp_path, log_lines=False)
    fn = h.get("who")
    assert fn is not None
    assert fn.runtime is None
    assert "no user named 'no-such-user-here'" in (fn.problem or "")


SERVER = textwrap.dedent(
    """
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            what = body["what"]
            print("got", self.headers["ce-id"], self.headers["ce-type"], flush=True)
            if what == "die":
                os._exit(1)
            status = {"ok": 200, "bad": 400, "fail": 500, "busy": 429}[what]
            self.send_response(status)
            if what == "ok":
                self.send_header("ce-type", "com.example.Answer.v0")
                self.send_header("ce-id", "a-1")
                self.send_header("ce-source", "urn:fn")
                self.send_header("ce-specversion", "1.0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "12")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')
                return
            if what == "busy":
                self.send_header("Retry-After", "9")
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"nope")

        def log_message(self, *a):
            pass

    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
    """
)


async def test_an_http_function_server_is_supervised_and_sent_binary_events(
    tmp_path: Path,
) -> None:
    (tmp_path / "server.py").write_text(SERVER)
    cfg = parse_config({"functions": [
        {"name": "web", "http": {"command": ["python3", "server.py"], "ready_path": "/"},
         "workers": 1}
    ]})  # fmt: skip
    h = FunctionHost(cfg, base_dir=tmp_path, log_lines=False)
    await h.start()
    try:
        ok = await invoke(h, "web", event("ok", "h1"))
        assert ok.status == "done"
        (reply,) = replies(ok)
        assert (reply["type"], reply["data"]) == ("com.example.Answer.v0", {"ok": True})
        assert (await invoke(h, "web", event("bad"))).status == "reject"
        assert (await invoke(h, "web", event("fail"))).status == "error"
        busy = await invoke(h, "web", event("busy"))
        assert (busy.status, busy.retry_after) == ("retry", 9)
        died = await invoke(h, "web", event("die"))
        assert died.status == "crashed"
        assert (await invoke(h, "web", event("ok", "h2"))).status == "done", "started again"
        fn = h.get("web")
        assert fn is not None
        lines = [line.text for line in fn.output.recent(20)]
        assert "got h1 com.example.Test.v0" in lines
    finally:
        await h.close()
