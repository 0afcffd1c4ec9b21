"""Event keys: serial order across the int32 wrap, and positions."""

from __future__ import annotations

from vebus_collector.events import event_id, msg_id
from vebus_collector.position import Position, is_newer, key_distance, next_key, to_int32

INT32_MAX = 2**31 - 1


def test_plain_order() -> None:
    assert is_newer(5, 4)
    assert not is_newer(4, 5)
    assert not is_newer(4, 4)
    assert is_newer(1, None)


def test_a_wrap_past_int32_is_still_newer() -> None:
    assert next_key(INT32_MAX) == -(2**31)
    assert is_newer(-(2**31), INT32_MAX)
    assert is_newer(-(2**31) + 10, INT32_MAX - 10)
    assert not is_newer(INT32_MAX, -(2**31))
    assert key_distance(-(2**31) + 1, INT32_MAX) == 2


def test_a_restart_of_keys_is_older() -> None:
    # keys going back from 5000 to 3 is not a wrap: the collector must see a new epoch
    assert not is_newer(3, 5000)


def test_to_int32() -> None:
    assert to_int32(2**31) == -(2**31)
    assert to_int32(-1) == -1


def test_positions_compare_by_epoch_then_key() -> None:
    a = Position(epoch=0, key=10, created_time="t")
    assert Position(epoch=0, key=11).after(a)
    assert not Position(epoch=0, key=9).after(a)
    assert Position(epoch=1, key=1).after(a)
    assert a.after(None)
    assert not Position(epoch=0).after(a)


def test_ids_across_epochs() -> None:
    assert event_id(0, 42) == "42"
    assert event_id(2, 42) == "2-42"
    assert msg_id("vc01", 0, 42) == "vc01:0:42"
