"""The follower's publishing logic against a fake vCenter (pure logic: keys, epochs, gaps,
limits, the watchdog, re-login); the real thing is in tests/integration/test_collector_*."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from pyVmomi import vim

from vebus.bus.publish import OutgoingMessage
from vebus.config import VCenterConfig
from vebus_collector import follower as follower_module
from vebus_collector.follower import Follower
from vebus_collector.position import Position, next_key
from vebus_collector.status import VCenterStatus

INT32_MAX = 2**31 - 1
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


_CLOCK = itertools.count()


def _event(key: int) -> Any:
    return vim.event.GeneralUserEvent(
        key=key,
        chainId=key,
        createdTime=T0 + dt.timedelta(milliseconds=next(_CLOCK)),
        userName="",
        message=f"event {key}",
    )


class FakeVCenter:
    """A vCenter whose history and latest page are lists of real pyvmomi event objects."""

    api_version = "6.5"
    full_name = "fake vCenter"

    def __init__(self, first_key: int = 1, page_size: int = 4) -> None:
        self.events: list[Any] = []
        self.next = first_key
        self.page_size = page_size
        self.connects = 0
        self.page_version = 0
        self.seen_version = 0
        self.tail_hangs = False
        self.tails = 0
        self.fail_next_wait: BaseException | None = None

    def post(self, count: int) -> None:
        for _ in range(count):
            self.events.append(_event(self.next))
            self.next = next_key(self.next)
        self.page_version += 1

    # VCenterReader
    def connect(self) -> None:
        self.connects += 1

    def close(self) -> None:
        pass

    def latest(self, count: int = 1) -> list[Any]:
        return list(reversed(self.events[-count:]))

    def latest_key(self) -> int | None:
        return int(self.events[-1].key) if self.events else None

    def history_pages(self, since: dt.datetime | None) -> Iterator[list[Any]]:
        snapshot = list(self.events)  # like vcsim: time filters are not applied
        for i in range(0, len(snapshot), 7):
            yield snapshot[i : i + 7]

    def open_tail(self, page_size: int) -> None:
        self.page_size = page_size
        self.seen_version = 0
        self.tails += 1

    def wait_page(self, max_wait: int) -> list[Any] | None:
        if self.fail_next_wait is not None:
            e, self.fail_next_wait = self.fail_next_wait, None
            raise e
        if self.tail_hangs or self.page_version == self.seen_version:
            time.sleep(0.01)
            return None
        self.seen_version = self.page_version
        return list(reversed(self.events[-self.page_size :]))


class RecordingPublisher:
    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []

    async def publish(
        self, items: Sequence[tuple[OutgoingMessage, Any]], on_ack: Callable[[Any], None]
    ) -> None:
        for msg, tag in items:
            self.messages.append(msg)
            on_ack(tag)

    def keys(self) -> list[int]:
        return [int(m.headers["vebus-key"]) for m in self.messages]


class MemoryStore:
    def __init__(self, pos: Position | None = None) -> None:
        self.pos = pos
        self.saves = 0

    async def claim(self) -> Position | None:
        return self.pos

    async def save(self, pos: Position) -> None:
        self.pos = pos
        self.saves += 1


class Harness:
    def __init__(
        self,
        vc: FakeVCenter,
        checkpoint: Position | None = None,
        **cfg: Any,
    ) -> None:
        self.vc = vc
        self.publisher = RecordingPublisher()
        self.store = MemoryStore(checkpoint)
        self.status = VCenterStatus("vc")
        self.stopping = asyncio.Event()
        settings: dict[str, Any] = {
            "name": "vc",
            "url": "https://vc.example.com/sdk",
            "username": "u",
            "password": "p",
            "page_size": 4,
            "start": "earliest",
            "checkpoint_interval": 0.05,
            **cfg,
        }
        self.follower = Follower(
            VCenterConfig(**settings),
            client=vc,
            publisher=self.publisher,
            store=self.store,  # type: ignore[arg-type]
            stream_last=self._nothing,
            status=self.status,
            stopping=self.stopping,
            max_payload=1024 * 1024,
        )
        self.task: asyncio.Task[None] | None = None

    @staticmethod
    async def _nothing() -> Position | None:
        return None

    def start(self) -> Harness:
        self.task = asyncio.create_task(self.follower.run())
        return self

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if self.task is not None and self.task.done():
                self.task.result()
            assert asyncio.get_running_loop().time() < deadline, (
                f"timed out; published {self.publisher.keys()[-10:]}, state {self.status}"
            )
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.stopping.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


def _keys_from(first: int, count: int) -> list[int]:
    out, k = [], first
    for _ in range(count):
        out.append(k)
        k = next_key(k)
    return out


async def test_keys_that_wrap_past_int32_are_all_published_in_order() -> None:
    vc = FakeVCenter(first_key=INT32_MAX - 4)
    vc.post(5)  # ... 2**31-1: read as history
    h = Harness(vc).start()
    await h.until(lambda: len(h.publisher.messages) == 5)
    await h.until(lambda: h.status.state == "tailing")
    vc.post(3)  # -2**31 .. : one page, each key follows the last
    await h.until(lambda: len(h.publisher.messages) == 8)
    vc.post(10)  # more than a page: the gap is read from history
    await h.until(lambda: len(h.publisher.messages) == 18)
    vc.post(1)
    await h.until(lambda: len(h.publisher.messages) == 19)
    await h.stop()

    expected = _keys_from(INT32_MAX - 4, 19)
    assert expected[5] == -(2**31)
    assert h.publisher.keys() == expected
    assert {m.headers["vebus-epoch"] for m in h.publisher.messages} == {"0"}
    assert [m.headers["Nats-Msg-Id"] for m in h.publisher.messages[4:6]] == [
        f"vc:0:{INT32_MAX}",
        f"vc:0:{-(2**31)}",
    ]
    assert h.store.pos is not None
    assert h.store.pos.key == expected[-1]


async def test_resuming_across_the_wrap_is_not_a_new_epoch() -> None:
    vc = FakeVCenter(first_key=INT32_MAX - 3)
    vc.post(8)  # 2**31-4 .. -2**31+3
    checkpoint = Position(epoch=0, key=INT32_MAX - 1, created_time=_iso(vc.events[2]))
    h = Harness(vc, checkpoint).start()
    await h.until(lambda: len(h.publisher.messages) == 5)
    await h.stop()
    assert h.publisher.keys() == _keys_from(INT32_MAX, 5)
    assert h.status.epoch == 0


async def test_keys_that_start_again_are_a_new_epoch() -> None:
    vc = FakeVCenter(first_key=1)
    vc.post(10)
    checkpoint = Position(epoch=0, key=5000, created_time="2023-01-01T00:00:00.000000Z")
    h = Harness(vc, checkpoint).start()
    await h.until(lambda: len(h.publisher.messages) == 10)
    await h.stop()
    assert h.publisher.keys() == list(range(1, 11))
    assert {m.headers["ce-id"] for m in h.publisher.messages} == {f"1-{k}" for k in range(1, 11)}
    assert h.store.pos == Position(epoch=1, key=10, created_time=_iso(vc.events[-1]))


async def test_a_checkpoint_older_than_the_history_warns_of_lost_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    vc = FakeVCenter(first_key=200)
    vc.post(20)
    checkpoint = Position(epoch=0, key=100, created_time="2023-01-01T00:00:00.000000Z")
    with caplog.at_level(logging.WARNING):
        h = Harness(vc, checkpoint).start()
        await h.until(lambda: len(h.publisher.messages) == 20)
        await h.stop()
    assert h.publisher.keys() == list(range(200, 220))
    assert h.status.history_lost == 99
    assert any("HISTORY LOST: 99 event(s)" in r.getMessage() for r in caplog.records)


async def test_catchup_max_events_publishes_only_the_newest() -> None:
    vc = FakeVCenter(first_key=101)
    vc.post(100)
    checkpoint = Position(epoch=0, key=100, created_time=_iso(vc.events[0]))
    h = Harness(vc, checkpoint, catchup_max_events=10).start()
    await h.until(lambda: h.status.state == "tailing")
    vc.post(2)
    await h.until(lambda: len(h.publisher.messages) == 12)
    await h.stop()
    assert h.publisher.keys() == list(range(191, 203))
    assert h.status.history_lost == 90


async def test_updates_that_stop_coming_are_repaired_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(follower_module, "RESYNC_AFTER", 0.2)
    vc = FakeVCenter(first_key=1)
    vc.post(3)
    h = Harness(vc).start()  # stall_after: the default 60 s
    await h.until(lambda: h.status.state == "tailing")
    vc.tail_hangs = True  # vCenter moves on, no update arrives (vcsim: another session waits)
    vc.post(5)
    await h.until(lambda: len(h.publisher.messages) == 8)
    await h.stop()
    assert h.publisher.keys() == list(range(1, 9))
    assert h.status.resyncs == 1
    assert h.status.stalls == 0
    assert vc.connects == 1, "no reconnect: history read, tail opened again"
    assert vc.tails == 2


async def test_a_stalled_tail_is_reported_and_recovered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follower_module, "RESYNC_AFTER", 100.0)
    vc = FakeVCenter(first_key=1)
    vc.post(3)
    h = Harness(vc, stall_after=0.3).start()
    await h.until(lambda: h.status.state == "tailing")
    vc.tail_hangs = True  # the page never changes any more, vCenter moves on
    vc.post(5)
    await h.until(lambda: h.status.stalls == 1)
    assert h.status.state in ("stalled", "unreachable", "connecting")
    vc.tail_hangs = False
    await h.until(lambda: len(h.publisher.messages) == 8)
    await h.until(lambda: h.status.state == "tailing")
    await h.stop()
    assert h.publisher.keys() == list(range(1, 9))
    assert vc.connects == 2, "the stall was answered with a reconnect"


async def test_an_expired_session_logs_in_again_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follower_module, "RELOGIN_GRACE", 0.0)
    vc = FakeVCenter(first_key=1)
    vc.post(2)
    h = Harness(vc).start()
    await h.until(lambda: h.status.state == "tailing")
    vc.fail_next_wait = vim.fault.NotAuthenticated(msg="session expired")
    started = asyncio.get_running_loop().time()
    await h.until(lambda: vc.connects == 2)
    assert asyncio.get_running_loop().time() - started < 0.9, "no backoff for a re-login"
    vc.post(2)
    await h.until(lambda: len(h.publisher.messages) == 4)
    await h.stop()
    assert h.publisher.keys() == [1, 2, 3, 4]


async def test_connection_errors_back_off_and_retry() -> None:
    vc = FakeVCenter(first_key=1)
    vc.post(2)
    h = Harness(vc)
    h.follower._backoff = lambda state: 0.01  # type: ignore[method-assign]
    failures = iter([ConnectionRefusedError("refused"), OSError("reset")])
    real_connect = vc.connect

    def flaky() -> None:
        real_connect()
        e = next(failures, None)
        if e is not None:
            raise e

    vc.connect = flaky  # type: ignore[method-assign]
    h.start()
    await h.until(lambda: h.status.state == "tailing")
    await h.stop()
    assert vc.connects == 3
    assert h.publisher.keys() == [1, 2]


def _iso(event: Any) -> str:
    return str(event.createdTime.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


class QueuingVCenter(FakeVCenter):
    """Like vcsim: one queued update per new event, each the watched page as it was then;
    an answer carries every update queued since the last one. Counts history reads."""

    def __init__(self, first_key: int = 1) -> None:
        super().__init__(first_key)
        self.history_reads = 0
        self.answered = 0

    def history_pages(self, since: dt.datetime | None) -> Iterator[list[Any]]:
        self.history_reads += 1
        yield from super().history_pages(since)

    def wait_page(self, max_wait: int) -> list[Any] | None:
        if len(self.events) == self.answered:
            time.sleep(0.01)
            return None
        out: list[Any] = []
        for i in range(self.answered, len(self.events)):  # one page per event posted
            out.extend(reversed(self.events[max(0, i + 1 - self.page_size) : i + 1]))
        self.answered = len(self.events)
        return out


async def test_a_burst_across_the_wrap_is_taken_from_the_updates_without_history() -> None:
    vc = QueuingVCenter(first_key=INT32_MAX - 20)
    vc.post(2)
    h = Harness(vc, page_size=1000).start()  # page_size no longer sizes the watched page
    await h.until(lambda: h.status.state == "tailing")
    reads = vc.history_reads
    vc.answered = len(vc.events)
    vc.post(500)  # crosses 2**31-1 -> -2**31
    await h.until(lambda: len(h.publisher.messages) == 502)
    await h.stop()
    assert vc.page_size == 1  # the tail watches one event whatever page_size says
    assert vc.history_reads == reads  # the updates held every key: no history read
    assert h.publisher.keys() == _keys_from(INT32_MAX - 20, 502)


async def test_a_coalesced_burst_is_read_from_history_once_no_gap_no_duplicate() -> None:
    vc = FakeVCenter(first_key=INT32_MAX - 2)
    vc.post(1)
    h = Harness(vc).start()
    await h.until(lambda: h.status.state == "tailing")
    vc.post(40)  # one update of the newest event only, as a real vCenter coalesces
    await h.until(lambda: len(h.publisher.messages) == 41)
    vc.post(1)
    await h.until(lambda: len(h.publisher.messages) == 42)
    await h.stop()
    assert h.publisher.keys() == _keys_from(INT32_MAX - 2, 42)


def test_follows_means_the_next_keys_without_a_hole() -> None:
    follows = follower_module._follows
    assert follows(5, {6, 7, 8})
    assert not follows(5, {7, 8})
    assert not follows(5, {6, 8})
    assert follows(INT32_MAX, {-(2**31), -(2**31) + 1})
    assert not follows(INT32_MAX, {-(2**31) + 1})
