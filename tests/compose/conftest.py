"""The compose test's topology: the repository's compose.yaml, up, on a Docker engine of the
test's own (tests/compose/engine.py), with the images `scripts/images` builds.

`stack` starts once for the module: dockerd, `scripts/images` (cold: debootstrap, the
wheelhouse, the image builds; warm: seconds, the engine's data root stays in
build/compose-test), `docker compose up --wait` with an env file of test passwords and free
ports, an HTTP sink container, and the test's route applied with `vebus routes apply` from
the cli image. At the end: `docker compose down -v` (unless a test did), dockerd stopped,
its leftovers removed. The ledger and timings are printed in a "compose" section.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.compose.engine import Engine, EngineError, why_docker_cannot_run
from tests.compose.stack import REPO, SINK, Compose

_REPORT = pytest.StashKey[list[str]]()
HOME = REPO / "build" / "compose-test"

ROUTES = """\
routes:
  - name: to-sink
    sink:
      kind: webhook
      url: http://sink:8000/
      auth: {kind: bearer, token: "${SINK_TOKEN}"}
    delivery:
      max_attempts: 100
      timeout: 5s
      backoff: {initial: 200ms, max: 2s}
  - name: vm-off-to-function
    match: {type: [com.vmware.vsphere.VmPoweredOffEvent.v0]}
    sink: {kind: function, function: powered-off}
"""


class Report:
    """Lines for the "compose" section at the end of the run."""

    def __init__(self, config: pytest.Config) -> None:
        self.lines = config.stash.setdefault(_REPORT, [])

    def add(self, text: str) -> None:
        self.lines.extend(text.splitlines())


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest) -> Report:
    return Report(request.config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_REPORT, [])
    if lines:
        terminalreporter.section("compose")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def engine(report: Report) -> Iterator[Engine]:
    why = why_docker_cannot_run()
    if why is not None:
        text, fixable = why
        if fixable:
            pytest.fail(f"the compose test cannot run: {text}")
        pytest.skip(f"Docker cannot run here: {text}")
    engine = Engine(HOME)
    start = time.monotonic()
    try:
        engine.start()
    except EngineError as e:
        engine.stop()
        pytest.fail(str(e))
    report.add(
        f"dockerd (pool {engine.pool}, exec root {engine.exec_root}) up in "
        f"{time.monotonic() - start:.1f}s"
        + (
            f"; FORWARD drops by default: chain {engine.chain} lets the pool through"
            if engine.chain
            else ""
        )
    )
    yield engine
    cleaned = engine.stop()
    report.add("dockerd stopped" + (f"; cleaned: {'; '.join(cleaned)}" if cleaned else ""))


@pytest.fixture(scope="module")
def images(engine: Engine, report: Report) -> Engine:
    """The engine, once `scripts/images` built every image in it."""
    start = time.monotonic()
    log = HOME / "images.log"
    with open(log, "w") as out:
        done = subprocess.run(
            [str(REPO / "scripts" / "images")],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=engine.env(),
            timeout=600,
            check=False,
        )
    text = log.read_text(errors="replace")
    assert done.returncode == 0, f"scripts/images failed ({done.returncode}):\n{text[-5000:]}"
    report.add(f"scripts/images: {time.monotonic() - start:.1f}s")
    # the engine's data root stays in build/: images a code change left behind go, and the
    # build cache keeps its most recent 1 GB (what the next warm run uses)
    engine.docker("image", "prune", "--force")
    engine.run("builder", "prune", "--force", "--keep-storage", "1GB")
    report.add("\n".join(f"  {line}" for line in text.splitlines() if line.startswith("images: ")))
    return engine


@pytest.fixture(scope="module")
def stack(
    images: Engine, report: Report, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Compose]:
    engine = images
    st = Compose(engine, tmp_path_factory.mktemp("compose"))
    st.write_env()

    # a run that died before its `down` left its containers and volumes in the data root
    st.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=120)
    engine.docker("rm", "-f", SINK, check=False)

    start = time.monotonic()
    st.compose("up", "-d", "--wait", "--wait-timeout", "180", timeout=240)
    report.add(f"docker compose up --wait: healthy in {time.monotonic() - start:.1f}s")

    st.start_sink()
    st.routes_file.write_text(ROUTES)
    out = st.compose(
        "run",
        "--rm",
        "-v",
        f"{st.routes_file}:/routes.yaml:ro",
        "cli",
        "routes",
        "apply",
        "/routes.yaml",
        timeout=120,
    )
    report.add(
        "vebus routes apply (cli image):\n"
        + "\n".join(f"  {line}" for line in out.stdout.strip().splitlines())
    )

    yield st

    engine.docker("rm", "-f", SINK, check=False)
    if st.containers():
        st.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False, timeout=180)
