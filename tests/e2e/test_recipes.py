"""Every recipe in examples/ run as it ships: the file itself (its `${ENV}` references
pointed at local sinks), the collector, filter and dispatcher as processes, the vSphere
action done in vcsim, and what the real sink received checked."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from tests.conftest import REPO, Vcsim
from tests.support.sink import SERVICENOW_PASSWORD, SERVICENOW_USER, RecordingSink, SaasFake
from tests.support.stack import Stack
from tests.support.vsphere import VSphere
from vebus.local.embedded import free_port

pytestmark = pytest.mark.e2e

EXAMPLES = REPO / "examples"


def recipe(name: str) -> Path:
    return EXAMPLES / name / "vebus.yaml"


async def run_recipe(
    stack: Stack, vcsim: Vcsim, monkeypatch: pytest.MonkeyPatch, name: str, **env: str
) -> None:
    """Start collector, filter and dispatcher on the recipe's own file, with `env` set."""
    for key, value in {
        "NATS_URL": stack.nats_url,
        "VC_URL": vcsim.url,
        "VC_USER": "user",
        "VC_PASSWORD": "pass",
        **env,
    }.items():
        monkeypatch.setenv(key, value)  # the services inherit the test's environment
    stack.config_path = recipe(name)
    await asyncio.to_thread(stack.start, "collector", "filter", "dispatcher")


async def eventually(what: str, stack: Stack, probe: Callable[[], Any], timeout: float = 45) -> Any:
    """Poll `probe` (in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(probe)
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{stack.logs()}")
        await asyncio.sleep(0.3)


async def vsphere(vcsim: Vcsim) -> VSphere:
    return await asyncio.to_thread(VSphere, vcsim.url)


def first_powered_on(vs: VSphere) -> Any:
    return next(v for v in vs.vms() if v.runtime.powerState == "poweredOn")


@pytest.fixture
async def saas() -> AsyncIterator[SaasFake]:
    fake = await SaasFake().start()
    yield fake
    await fake.stop()


def test_every_recipe_is_listed_in_the_examples_readme() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for path in sorted(EXAMPLES.glob("*/vebus.yaml")):
        assert f"({path.parent.name}/vebus.yaml)" in readme, path.parent.name


# ------------------------------------------------------------------------- the recipes


async def test_vm_powered_off_to_slack(
    stack: Stack, vcsim: Vcsim, saas: SaasFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run_recipe(stack, vcsim, monkeypatch, "vm-powered-off-to-slack",
                     SLACK_WEBHOOK_URL=saas.url("/services/T000/B000/slack"))  # fmt: skip
    vs = await vsphere(vcsim)
    vm = await asyncio.to_thread(first_powered_on, vs)
    await asyncio.to_thread(vs.power_off, vm)
    await eventually("a Slack message", stack, lambda: saas.accepted["slack"])
    (msg,) = saas.accepted["slack"]
    assert msg["text"].startswith(f":red_circle: *{vm.name}* was powered off on DC0_")
    assert " by user at 20" in msg["text"]
    assert not saas.refused
    await asyncio.to_thread(vs.close)


async def test_host_connection_lost_to_ticket(
    stack: Stack, vcsim: Vcsim, saas: SaasFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run_recipe(stack, vcsim, monkeypatch, "host-connection-lost-to-ticket",
                     SERVICENOW_URL=saas.url(""), SERVICENOW_USER=SERVICENOW_USER,
                     SERVICENOW_PASSWORD=SERVICENOW_PASSWORD)  # fmt: skip
    vs = await vsphere(vcsim)

    def lose_host() -> str:
        # vcsim cannot disconnect a host: post the event vCenter records when it happens
        host = vs.content.viewManager.CreateContainerView(
            vs.content.rootFolder, [vim.HostSystem], True
        ).view[0]
        dc = vs.content.rootFolder.childEntity[0]
        vs.content.eventManager.PostEvent(
            vim.event.HostConnectionLostEvent(
                host=vim.event.HostEventArgument(host=host, name=host.name),
                datacenter=vim.event.DatacenterEventArgument(datacenter=dc, name=dc.name),
                createdTime=dt.datetime.now(dt.UTC),
                key=0,
                chainId=0,
                userName="",
            )
        )
        return str(host.name)

    host = await asyncio.to_thread(lose_host)
    await eventually("a ServiceNow incident", stack, lambda: saas.accepted["servicenow"])
    (incident,) = saas.accepted["servicenow"]
    assert incident["short_description"] == f"Host {host} lost its connection to vCenter"
    assert incident["cmdb_ci"] == host
    assert incident["urgency"] == "1"
    assert incident["correlation_id"].startswith(vcsim.url + "#")
    assert not saas.refused
    await asyncio.to_thread(vs.close)


async def test_vm_created_custom_attribute(
    stack: Stack, vcsim: Vcsim, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run_recipe(stack, vcsim, monkeypatch, "vm-created-custom-attribute")
    vs = await vsphere(vcsim)

    def create() -> Any:
        template = vs.vms()[0]
        spec = vim.vm.ConfigSpec(
            name="recipe-new-vm",
            guestId="otherGuest64",
            numCPUs=1,
            memoryMB=128,
            files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        )
        WaitForTask(template.parent.CreateVM_Task(spec, template.resourcePool))
        return next(v for v in vs.vms() if v.name == "recipe-new-vm")

    new = await asyncio.to_thread(create)

    def attribute() -> str | None:
        names = {f.key: f.name for f in vs.content.customFieldsManager.field}
        values = {names.get(v.key): v.value for v in new.customValue}
        return values.get("created-by")

    value = await eventually("the created-by attribute", stack, attribute)
    assert value == f"user on {dt.datetime.now(dt.UTC):%Y-%m-%d}"
    others = [v for v in await asyncio.to_thread(vs.vms) if v.name != "recipe-new-vm"]
    assert all(not v.customValue for v in others)  # only the new VM
    await asyncio.to_thread(vs.close)


@dataclass
class SyslogServer:
    """A TCP syslog receiver (octet-counting framing, RFC 6587)."""

    messages: list[str] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                length = await reader.readuntil(b" ")
                self.messages.append((await reader.readexactly(int(length[:-1]))).decode())
        writer.close()

    def events(self) -> list[tuple[int, dict[str, Any]]]:
        """(PRI, the CloudEvent in MSG) of each message."""
        out = []
        for m in self.messages:
            pri = re.match(r"^<(\d+)>1 ", m)
            assert pri, m
            out.append((int(pri.group(1)), json.loads(m[m.index("{") :])))
        return out


async def test_logins_to_siem(stack: Stack, vcsim: Vcsim, monkeypatch: pytest.MonkeyPatch) -> None:
    syslog = SyslogServer()
    server = await asyncio.start_server(syslog.handle, "127.0.0.1", 0)
    syslog.port = server.sockets[0].getsockname()[1]
    try:
        await run_recipe(stack, vcsim, monkeypatch, "logins-to-siem",
                         SYSLOG_HOST="127.0.0.1", SYSLOG_PORT=str(syslog.port))  # fmt: skip
        parts = urlsplit(vcsim.url)

        def logins() -> None:
            si = SmartConnect(host=parts.hostname, port=parts.port, user="alice", pwd="secret",
                              protocol="http")  # fmt: skip
            # vcsim accepts every password: post the event vCenter records for a bad one
            si.content.eventManager.PostEvent(
                vim.event.BadUsernameSessionEvent(
                    ipAddress="10.9.8.7", createdTime=dt.datetime.now(dt.UTC), key=0, chainId=0,
                    userName="mallory",
                )
            )  # fmt: skip
            Disconnect(si)

        await asyncio.to_thread(logins)
        authpriv = 10 * 8

        def arrived() -> bool:
            events = syslog.events()
            ok = [e for p, e in events if p == authpriv + 6 and e["data"]["UserName"] == "alice"]
            bad = [e for p, e in events if p == authpriv + 4]
            return bool(ok and bad)

        await eventually("a login and a failed login on syslog", stack, arrived)
        events = syslog.events()
        (bad,) = [e for p, e in events if p == authpriv + 4]
        assert bad["type"] == "com.vmware.vsphere.BadUsernameSessionEvent.v0"
        assert bad["data"]["IpAddress"] == "10.9.8.7"
        login = next(e for p, e in events if p == authpriv + 6 and e["data"]["UserName"] == "alice")
        assert login["type"] == "com.vmware.vsphere.UserLoginSessionEvent.v0"
        assert login["source"] == vcsim.url
        # nothing but login events reach the SIEM
        assert {e["subject"] for _, e in events} <= {
            "UserLoginSessionEvent", "UserLogoutSessionEvent", "BadUsernameSessionEvent"
        }  # fmt: skip
    finally:
        server.close()


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.lock:
            self.messages.append(msg)
        return "250 Message accepted for delivery"


async def test_snapshot_age_to_email(
    stack: Stack, vcsim: Vcsim, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiosmtpd.controller import Controller

    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        await run_recipe(stack, vcsim, monkeypatch, "snapshot-age-to-email",
                         SMTP_HOST="127.0.0.1", SMTP_PORT=str(port), SMTP_SECURITY="none",
                         MAIL_TO="ops@example.com", SNAPSHOT_MAX_AGE="1s",
                         SNAPSHOT_CHECK_INTERVAL="1s")  # fmt: skip
        vs = await vsphere(vcsim)
        vm = (await asyncio.to_thread(vs.vms))[0]
        await asyncio.to_thread(
            lambda: WaitForTask(vm.CreateSnapshot_Task("nightly", "", False, False))
        )
        await eventually("an e-mail", stack, lambda: mailbox.messages)
        await asyncio.sleep(2)  # two more check runs: still one e-mail
        (msg,) = mailbox.messages
        assert msg["To"] == "ops@example.com"
        assert msg["Subject"] == f'[vSphere] snapshot "nightly" of {vm.name}'
        body = msg.get_content()
        assert f"Snapshot 'nightly' of VM {vm.name} is " in body
        assert f"VM:        {vm.name} ({vm._moId}) in DC0" in body
        assert "Snapshot:  nightly (created 20" in body

        await asyncio.to_thread(lambda: WaitForTask(vm.RemoveAllSnapshots_Task()))
        await eventually("the clearing e-mail", stack, lambda: len(mailbox.messages) == 2)
        assert mailbox.messages[1]["Subject"].startswith("[vSphere] gone: snapshot")
        await asyncio.to_thread(vs.close)
    finally:
        controller.stop()


async def test_everything_to_eventbridge(
    stack: Stack, vcsim: Vcsim, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    region, port = "eu-west-1", free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        sqs = boto3.client("sqs", region_name=region, endpoint_url=endpoint, **keys)
        queue = sqs.create_queue(QueueName="vsphere")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        events = boto3.client("events", region_name=region, endpoint_url=endpoint, **keys)
        events.put_rule(Name="vm-off", State="ENABLED", EventPattern=json.dumps(
            {"source": ["vebus.vsphere"], "detail-type": ["VmPoweredOffEvent"]}))  # fmt: skip
        events.put_targets(Rule="vm-off", Targets=[{"Id": "q", "Arn": arn}])
        await run_recipe(stack, vcsim, monkeypatch, "everything-to-eventbridge",
                         AWS_REGION=region, EVENTBRIDGE_ENDPOINT_URL=endpoint,
                         AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")  # fmt: skip
        vs = await vsphere(vcsim)
        vm = await asyncio.to_thread(first_powered_on, vs)
        await asyncio.to_thread(vs.power_off, vm)

        def received() -> list[dict[str, Any]]:
            answer = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            return [json.loads(m["Body"]) for m in answer.get("Messages", [])]

        (got,) = await eventually("the event on the bus", stack, received)
        assert got["source"] == "vebus.vsphere"
        assert got["detail"]["type"] == "com.vmware.vsphere.VmPoweredOffEvent.v0"
        assert got["detail"]["data"]["Vm"]["Name"] == vm.name
        await asyncio.to_thread(vs.close)
    finally:
        server.stop()


async def test_config_changes_to_cmdb(
    stack: Stack, vcsim: Vcsim, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "cmdb-t0ken-for-the-test"
    await run_recipe(stack, vcsim, monkeypatch, "config-changes-to-cmdb",
                     CMDB_URL=f"http://127.0.0.1:{sink.port}/api/v1", CMDB_TOKEN=token)  # fmt: skip
    vs = await vsphere(vcsim)
    vm = (await asyncio.to_thread(vs.vms))[0]
    await asyncio.to_thread(
        lambda: WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(numCPUs=4, memoryMB=2048)))
    )
    assert await sink.wait_for(lambda: bool(sink.accepted), timeout=45), stack.logs()
    (req,) = sink.accepted
    assert (req.method, req.path) == ("POST", "/api/v1/changes")
    assert req.headers["Authorization"] == f"Bearer {token}"
    change = req.json()
    assert change["ci"] == {"class": "vmware_vm", "name": vm.name, "moref": vm._moId,
                            "vcenter": vcsim.url}  # fmt: skip
    assert change["changed_by"] == "user"
    assert change["config_spec"]["NumCPUs"] == 4
    assert change["config_spec"]["MemoryMB"] == 2048
    await asyncio.to_thread(vs.close)
