"""A full JetStream is named for what it is: the publish error, and the readiness reason."""

from __future__ import annotations

import time

from nats.js.errors import APIError

from vebus import names
from vebus.bus.publish import refused
from vebus.errors import PublishError, RouteFullError, StorageFullError
from vebus.runtime import jshealth
from vebus.runtime.jshealth import PublishHealth


def api_error(err_code: int, description: str) -> APIError:
    return APIError(code=503, err_code=err_code, description=description)


def test_insufficient_resources_is_storage_full_with_its_stream() -> None:
    e = refused("vebus.routes.vm-off", api_error(10023, "insufficient resources"))
    assert isinstance(e, StorageFullError)
    assert e.stream == names.ROUTES_STREAM
    assert str(e).startswith("JetStream: insufficient storage for VEBUS_ROUTES")


def test_a_full_route_is_route_full_and_a_full_disk_is_not() -> None:
    full = refused("vebus.routes.a", api_error(10077, "maximum messages per subject exceeded"))
    assert isinstance(full, RouteFullError)
    disk = refused("vebus.routes.a", api_error(10077, "write x.blk: no space left on device"))
    assert isinstance(disk, StorageFullError)
    other = refused("vebus.routes.a", api_error(10060, "expected stream does not match"))
    assert type(other) is PublishError


def test_nats_py_errors_without_a_code_are_plain_refusals() -> None:
    from nats.js.errors import KeyWrongLastSequenceError

    e = refused("$KV.b.k", KeyWrongLastSequenceError())
    assert type(e) is PublishError


def test_kv_writes_are_named_by_their_bucket_stream() -> None:
    subject = names.kv_subject(names.LEASE_BUCKET, "lease.vc1")
    assert names.stream_name_of(subject) == "KV_vebus_leases"
    assert names.stream_name_of("vebus.events.vc1.X") == names.EVENTS_STREAM


def test_storage_full_is_a_reason_at_once_and_a_success_clears_it() -> None:
    h = PublishHealth()
    assert h.reason() is None
    h.failed("vebus.dlq.r", refused("vebus.dlq.r", api_error(10023, "insufficient resources")))
    h.failed("vebus.dlq.r", PublishError("publish to vebus.dlq.r was not acknowledged"))
    reason = h.reason()
    assert reason is not None
    assert "insufficient storage for VEBUS_DLQ" in reason  # kept over the later error
    assert h.report()[names.DLQ_STREAM]["failures"] == 2
    h.stored("vebus.dlq.other")
    assert h.reason() is None
    assert not h.failing


def test_unacknowledged_publishes_are_a_reason_only_after_a_while() -> None:
    h = PublishHealth()
    h.failed("vebus.events.vc1.X", PublishError("not acknowledged"))
    assert h.reason() is None  # a leader election is not worth a flap
    h.failing[names.EVENTS_STREAM].started = time.monotonic() - jshealth.NOT_READY_AFTER - 1
    reason = h.reason()
    assert reason is not None
    assert reason.startswith("JetStream: publishes to VEBUS_EVENTS failing")
