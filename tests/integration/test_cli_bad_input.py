"""Every `vebus` command given bad input says what to fix in a line and exits 2 (bad usage)
or 1 (a runtime failure): no traceback, no hang, no exit 0 on an error.

Run as a user runs them: subprocesses against real nats-servers, one whose vebus streams
exist, one fresh (no vebus service ever ran against it) and one without JetStream.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import nats
import pytest
from click.testing import CliRunner

from vebus.bus.streams import ensure_streams
from vebus.cli import COMMANDS, main
from vebus.config import Config
from vebus.local.embedded import (
    ManagedProcess,
    find_nats_server,
    free_port,
    start_nats,
    wait_for_port,
)

pytestmark = pytest.mark.integration

VEBUS = Path(sys.executable).parent / "vebus"


class Servers:
    def __init__(self, ready: str, fresh: str, nojs: str, tmp: Path) -> None:
        self.ready, self.fresh, self.nojs, self.tmp = ready, fresh, nojs, tmp


async def _create_streams(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await ensure_streams(nc.jetstream(), Config().stream_settings())
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("bad-input")
    ready, ready_port = start_nats(tmp / "ready")
    fresh, fresh_port = start_nats(tmp / "fresh")
    nojs_port = free_port()  # a NATS started without -js
    nojs = ManagedProcess(
        "nats-server",
        [find_nats_server(), "-a", "127.0.0.1", "-p", str(nojs_port)],
        tmp / "nojs.log",
    ).start()
    try:
        assert wait_for_port(nojs_port), nojs.output()
        asyncio.run(_create_streams(f"nats://127.0.0.1:{ready_port}"))
        (tmp / "cwd").mkdir()
        for name, content in FILES.items():
            (tmp / name).write_bytes(content)
        yield Servers(
            f"nats://127.0.0.1:{ready_port}",
            f"nats://127.0.0.1:{fresh_port}",
            f"nats://127.0.0.1:{nojs_port}",
            tmp,
        )
    finally:
        ready.kill()
        fresh.kill()
        nojs.kill()


def _command(args: list[str], servers: Servers, nats_url: str | None) -> list[str]:
    cmd = [str(VEBUS), *(a.replace("{tmp}", str(servers.tmp)) for a in args)]
    return [*cmd, "--nats-url", nats_url] if nats_url else cmd


def vebus(
    args: list[str], servers: Servers, nats_url: str | None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(args, servers, nats_url),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=servers.tmp / "cwd",  # no vebus.yaml there
        timeout=15,
        check=False,
    )


#: files the cases name as {tmp}/NAME
FILES = {
    "notyaml.yaml": b"routes: [\n",
    "binary.yaml": b"\xff\xfe\x00routes: []\n",
    "empty.yaml": b"",
    "list.yaml": b"- name: a\n",
    "routes.yaml": b"routes:\n  - name: r1\n    sink: {kind: console}\n",
}

# (args, NATS: "ready" | "fresh" | "nojs" | None, exit status, what stderr must say)
CASES: list[tuple[list[str], str | None, int, str]] = [
    # a subject nats-py refuses used to be a BadSubjectError traceback
    (["tail", "foo..bar"], "ready", 2, "has an empty token"),
    (["tail", ">.x"], "ready", 2, "'>' matches the rest of a subject and must be its last"),
    (["tail", "a b"], "ready", 2, "contains white space"),
    (["tail", "vebus.*x"], "ready", 2, "wildcards '*' and '>' must be whole tokens"),
    (["tail", "--count", "-1"], "ready", 2, "-1 is not in the range x>=0"),
    # an ID beyond a JetStream sequence used to reach NATS: "Malformed Request"
    (["dlq", "show", "99999999999999999999999"], "ready", 2, "is not in the range"),
    (["dlq", "purge", "99999999999999999999999"], "ready", 2, "is not in the range"),
    # a route name that is no subject token used to select route `a_b` or `_` silently
    (["dlq", "list", "--route", "a.b"], "ready", 2, "'a.b' is not a route name"),
    (["dlq", "list", "--route", "a b"], "ready", 2, "'a b' is not a route name"),
    (["dlq", "purge", "--route", ">", "--yes"], "ready", 2, "'>' is not a route name"),
    (["dlq", "replay", "--route", "*", "--yes"], "ready", 2, "'*' is not a route name"),
    (["dlq", "replay", "7", "--to-route", "a.b"], "ready", 2, "'a.b' is not a route name"),
    (["dlq", "list", "--since", "1h", "--until", "2h"], "ready", 2, "must be before --until"),
    (["stats", "--since", "1h", "--until", "2h"], "ready", 2, "the window is empty"),
    # an age beyond the calendar used to be an OverflowError traceback
    (["stats", "--since", "99999999999d"], "ready", 2, "--since: '99999999999d' is outside"),
    (["stats", "--until", "yesterday"], "ready", 2, "--until: expected an RFC 3339 time"),
    (["stats", "--top", "0"], "ready", 2, "0 is not in the range x>=1"),
    # an unwritable chart used to be a FileNotFoundError traceback after the whole scan
    (["stats", "--png", "{tmp}/no/such/folder/x.png"], "ready", 2, "no folder"),
    # used to be "cannot read VEBUS_EVENTS: nats: NotFoundError: code=404 ..."
    (["stats", "--since", "1h"], "fresh", 1, "has no VEBUS_EVENTS stream: no vebus service"),
    # 1e9 s between the two samples used to hang
    (["status", "--interval", "1e9"], "ready", 2, "1000000000.0 is not in the range"),
    (["status", "--interval", "0"], "ready", 2, "is not in the range"),
    # status reports (exit 0) and says what is missing, and what to do, on stderr
    (["status", "--interval", "0.1"], "fresh", 0, "no vebus service has run against this NATS"),
    (["config", "check", "missing.yaml"], None, 2, "missing.yaml: cannot read the config file"),
    # used to be "cannot log in to notaurl: expected string or bytes-like object, ..."
    (["demo", "--url", "notaurl"], None, 2, "--url 'notaurl': expected an http(s) URL"),
    (["demo", "--url", "http://127.0.0.1:abc/sdk"], None, 2, "expected an http(s) URL"),
    (["demo", "--cycles", "0"], None, 2, "0 is not in the range x>=1"),
    # ages beyond the calendar used to be OverflowError tracebacks
    (["dlq", "list", "--since", "99999999999d"], "ready", 2, "'99999999999d' is outside"),
    (["dlq", "purge", "--until", "3000000d"], "ready", 2, "'3000000d' is outside the years"),
    (["replay", "--from", "3000000d"], None, 2, "'3000000d' is outside the years 1 to 9999"),
    # a config file that cannot be read or parsed used to be named twice
    (["tail", "--config", "{tmp}/notyaml.yaml"], None, 2, "notyaml.yaml: not valid YAML (line"),
    (["dlq", "list", "--config", "{tmp}/binary.yaml"], None, 2, "binary.yaml: not UTF-8 text"),
    # archive replay sends events through the running routes: with none, it says so
    (["replay", "--from", "1h"], "ready", 2, "there are no running routes"),
    # a NATS without JetStream used to be "... failed: ServiceUnavailableError()" or a traceback
    (["dlq", "list"], "nojs", 1, "has no JetStream: vebus needs nats-server -js"),
    (["routes", "list"], "nojs", 1, "has no JetStream: vebus needs nats-server -js"),
    (["routes", "pause", "r1"], "nojs", 1, "has no JetStream: vebus needs nats-server -js"),
    (["routes", "apply", "{tmp}/routes.yaml"], "nojs", 1, "has no JetStream"),
    # files that are not UTF-8 or not YAML used to be tracebacks or eight lines
    (
        ["routes", "test", "--pattern", '{"type": ["x"]}', "--event", "{tmp}/binary.yaml"],
        None,
        2,
        "binary.yaml: not UTF-8 text: save the event file as UTF-8",
    ),
    (
        ["routes", "test", "--route", "r1", "--config", "{tmp}/binary.yaml", "--event", "-"],
        None,
        2,
        "binary.yaml: not UTF-8 text",
    ),
    (
        ["routes", "test", "--route", "r1", "--config", "{tmp}/notyaml.yaml", "--event", "-"],
        None,
        2,
        "notyaml.yaml: not valid YAML (line 2, column 1)",
    ),
    # used to name the file twice
    (["routes", "apply", "{tmp}/empty.yaml"], None, 2, "empty.yaml: expected a mapping with"),
    (["routes", "apply", "{tmp}/list.yaml"], None, 2, "list.yaml: expected a mapping with"),
    # used to be a YAMLError traceback, a line without the file's name, and exit 1
    (["up", "--config", "{tmp}/notyaml.yaml"], None, 2, "notyaml.yaml: not valid YAML (line"),
    (["up", "--config", "{tmp}/binary.yaml"], None, 2, "binary.yaml: not UTF-8 text"),
    (["up", "--config", "{tmp}/nofile.yaml"], None, 2, "nofile.yaml: cannot read the config"),
    (
        ["up", "--nats-sync-interval", "soon"],
        None,
        2,
        "--nats-sync-interval soon: expected `always` or a duration",
    ),
]


@pytest.fixture(scope="module")
def results(servers: Servers) -> list[subprocess.CompletedProcess[str]]:
    """Every case's run: a few at a time, so that the table takes seconds, not a minute."""
    urls = {"ready": servers.ready, "fresh": servers.fresh, "nojs": servers.nojs, None: None}
    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(lambda c: vebus(c[0], servers, urls[c[1]]), CASES))


@pytest.mark.parametrize(
    ("index", "status", "says"),
    [(i, c[2], c[3]) for i, c in enumerate(CASES)],
    ids=[" ".join(c[0]) + (f" ({c[1]})" if c[1] in ("fresh", "nojs") else "") for c in CASES],
)
def test_bad_input_is_one_clear_line(
    index: int, status: int, says: str, results: list[subprocess.CompletedProcess[str]]
) -> None:
    r = results[index]
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert says in r.stderr, r.stderr
    assert not re.search(r"(^|\s)(\S+): \2: ", r.stderr), r.stderr  # a file named once
    if not r.stderr.startswith("Usage:"):  # click's usage block ends in its one line
        assert len(r.stderr.splitlines()) <= 2, r.stderr  # a line per problem


def test_config_check_names_the_file_once(
    results: list[subprocess.CompletedProcess[str]],
) -> None:
    r = results[[c[0] for c in CASES].index(["config", "check", "missing.yaml"])]
    assert r.stderr == "missing.yaml: cannot read the config file: No such file or directory\n"


def test_status_before_any_service_says_what_is_missing(
    results: list[subprocess.CompletedProcess[str]],
) -> None:
    r = results[[(c[0], c[1]) for c in CASES].index((["status", "--interval", "0.1"], "fresh"))]
    assert r.stderr.splitlines() == [
        "vebus: no VEBUS_EVENTS, VEBUS_ROUTES, VEBUS_DLQ stream(s): no vebus service has run "
        "against this NATS yet (or --nats-url points at another server)",
        "vebus: no vebus service answered: start them with `vebus up` (or check --nats-url)",
    ]


def _interrupt(args: list[str], servers: Servers, ready_line: str | None, after: float) -> int:
    """Start `vebus args`, Ctrl-C it once it is working; its exit status (stderr checked)."""
    proc = subprocess.Popen(
        _command(args, servers, servers.ready),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=servers.tmp / "cwd",
        # a shell's background job ignores SIGINT, and so would this child: a terminal's
        # Ctrl-C reaches a command that has Python's default handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stderr is not None
        if ready_line is not None:
            assert ready_line in proc.stderr.readline()
        time.sleep(after)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert "Traceback" not in err, err
    assert "Aborted" not in err, err
    return proc.returncode


def test_ctrl_c_stops_tail_quietly(servers: Servers) -> None:
    assert _interrupt(["tail"], servers, "listening on vebus.events.>", 0.2) in (0, 130)


def test_ctrl_c_stops_status_quietly(servers: Servers) -> None:
    assert _interrupt(["status", "--interval", "5"], servers, None, 1.5) in (0, 130)


def test_ctrl_c_before_the_command_runs_exits_130_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C while a command starts, before its asyncio.run: no "Aborted!", status 130.

    A SIGINT sent to a starting process cannot be timed to land there (rather than in
    Python's own start-up), so the interrupt is raised where `status` reads its config.
    """
    import vebus.cli.status

    def interrupted(*_: object, **__: object) -> Config:
        raise KeyboardInterrupt

    monkeypatch.setattr(vebus.cli.status, "load_or_default", interrupted)
    r = CliRunner().invoke(main, ["status"])
    assert (r.exit_code, r.output) == (130, "")


@click.command()
def _confirming() -> None:
    click.confirm("Go on?", abort=True)


def test_a_refused_confirmation_still_aborts_with_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(COMMANDS, "confirming", (__name__, "_confirming"))
    r = CliRunner().invoke(main, ["confirming"], input="n\n")
    assert r.exit_code == 1
    assert "Aborted!" in r.output
