"""nats-py's private attributes that vebus.bus.natsapi reads are where it expects them.

An upgrade of nats-py that renames or moves one fails here, naming it, instead of making
the pull worker publish its requests to the wrong subject.
"""

from __future__ import annotations

from nats.aio.client import Client

from vebus.bus import natsapi


def test_a_jetstream_context_gives_its_connection_prefix_and_max_payload() -> None:
    nc = Client()  # not connected: the attributes exist from construction
    js = nc.jetstream()
    assert natsapi.connection(js) is nc
    assert natsapi.api_prefix(js) == "$JS.API"
    assert natsapi.api_prefix(nc.jetstream(domain="hub")) == "$JS.hub.API"
    assert natsapi.max_payload(js) == nc.max_payload
    assert isinstance(natsapi.max_payload(js), int)
