"""RFC 5424 messages and octet-counting frames, as the syslog sink writes them."""

from __future__ import annotations

from tests.support.dispatcher import event
from vebus_dispatcher.sinks.syslog import format_message, frame


def test_a_message_has_the_rfc5424_header_then_the_text() -> None:
    ev = event(1, time="2020-02-11T21:29:54.9052539Z")  # VEBA's seven fractional digits
    msg = format_message(ev, pri=38, hostname=None, app_name="vebus", msg="hello wörld")
    assert (
        msg
        == (
            "<38>1 2020-02-11T21:29:54.905253Z vc01.example.com vebus - VmPoweredOffEvent - "
            "hello wörld"
        ).encode()
    )


def test_header_fields_are_printable_ascii_within_their_limits() -> None:
    ev = event(2, subject="Event With Spaces And A Long Long Long Name", time=None)
    msg = format_message(ev, pri=13, hostname="h ost", app_name="", msg="m").decode()
    head, ts, host, app, procid, msgid, sd, text = msg.split(" ", 7)
    assert (head, host, app, procid, sd, text) == ("<13>1", "h_ost", "-", "-", "-", "m")
    assert msgid == "Event_With_Spaces_And_A_Long_Lon"  # 32 characters
    assert ts.endswith("Z")


def test_frames_count_octets_not_characters() -> None:
    assert frame("é".encode()) == b"2 \xc3\xa9"
