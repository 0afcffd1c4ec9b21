"""The filter's router: which routes an event goes to."""

from __future__ import annotations

from vebus.config import parse_config
from vebus.routing.router import Router


def test_routes_are_matched_independently() -> None:
    cfg = parse_config(
        {
            "routes": [
                {"name": "all", "sink": {"kind": "console"}},
                {
                    "name": "off",
                    "sink": {"kind": "console"},
                    "match": {"type": [{"prefix": "com.vmware.vsphere.VmPoweredOff"}]},
                },
                {
                    "name": "admin",
                    "sink": {"kind": "console"},
                    "match": {"data": {"UserName": [{"prefix": "VSPHERE.LOCAL\\"}]}},
                },
            ]
        },
        {},
    )
    router = Router(cfg.routes)
    off = {"type": "com.vmware.vsphere.VmPoweredOffEvent.v0", "data": {"UserName": "bob"}}
    assert [r.name for r in router.match(off)] == ["all", "off"]
    login = {
        "type": "com.vmware.vsphere.UserLoginSessionEvent.v0",
        "data": {"UserName": "VSPHERE.LOCAL\\Administrator"},
    }
    assert [r.name for r in router.match(login)] == ["all", "admin"]
    assert len(router) == 3
