"""`nats.creds`: a service and the `vebus` command log in with a NATS credentials file
(NKEY and user JWT: decentralised auth, as `nsc` makes them); one NATS does not know is
refused at once with exit status 2 and a line that names the file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.decentralised import Decentralised
from vebus.local.embedded import free_port, start_nats, start_service

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def test_services_and_the_command_log_in_with_a_credentials_file(tmp_path: Path) -> None:
    auth = Decentralised()
    conf = tmp_path / "operator.conf"
    conf.write_text(auth.server_conf())
    server, port = start_nats(tmp_path / "js", extra_args=["-c", str(conf)])
    url = f"nats://127.0.0.1:{port}"
    try:
        good = tmp_path / "good.yaml"
        creds = auth.user_creds(tmp_path / "u.creds")
        good.write_text(yaml.safe_dump({"nats": {"url": url, "creds": str(creds)}}))
        bad = tmp_path / "bad.yaml"
        stranger = auth.user_creds(tmp_path / "x.creds", account=Decentralised.stranger())
        bad.write_text(yaml.safe_dump({"nats": {"url": url, "creds": str(stranger)}}))

        refused = start_service("filter", bad, health_port=free_port(),
                                log_path=tmp_path / "bad.log")  # fmt: skip
        ok = start_service("filter", good, health_port=free_port(),
                           log_path=tmp_path / "good.log")  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while refused.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert refused.poll() == 2, refused.output()[-2000:]
            assert f"the credentials file {stranger}" in refused.output()
            assert "Traceback" not in refused.output()
            while "filtering with" not in ok.output():
                assert ok.poll() is None, ok.output()[-2000:]
                assert time.monotonic() < deadline, ok.output()[-2000:]
                time.sleep(0.2)
        finally:
            ok.stop()
            refused.kill()

        status = subprocess.run(
            [str(BIN / "vebus"), "routes", "list", "--config", str(good)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
    finally:
        server.kill()
