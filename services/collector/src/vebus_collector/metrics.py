"""The collector's own Prometheus families: each vCenter's state in this replica.

Read at scrape time from the live `VCenterStatus` of each vCenter (the same objects
/readyz shows), registered on the service's registry by the collector's body.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vebus_collector.status import CONNECTED_STATES, VCenterStatus

__all__ = ["VCenterMetrics"]


class VCenterMetrics(Collector):
    """vebus_vcenter_* gauges of the vCenters this replica follows or stands by for."""

    def __init__(self, statuses: Sequence[VCenterStatus]) -> None:
        self._statuses = statuses

    def describe(self) -> list[Metric]:
        return []  # not known until scraped; no name clashes to check

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "vebus_vcenter_connected",
            "1 while this replica has a live session to the vCenter (catching up, tailing or "
            "stalled), else 0.",
            labels=["vcenter"],
        )
        state = GaugeMetricFamily(
            "vebus_vcenter_state", "1 for the follower state this replica is in.",
            labels=["vcenter", "state"],
        )  # fmt: skip
        lease = GaugeMetricFamily(
            "vebus_vcenter_lease_held",
            "1 when this replica holds the vCenter's lease (the active collector), else 0.",
            labels=["vcenter"],
        )
        key = GaugeMetricFamily(
            "vebus_vcenter_last_event_key",
            "Key of the last event published (stored) for the vCenter by this replica.",
            labels=["vcenter"],
        )
        vc_key = GaugeMetricFamily(
            "vebus_vcenter_latest_key",
            "Latest event key vCenter reported (key lag = this - vebus_vcenter_last_event_key).",
            labels=["vcenter"],
        )
        for s in self._statuses:
            connected.add_metric([s.name], 1.0 if s.state in CONNECTED_STATES else 0.0)
            state.add_metric([s.name, s.state], 1.0)
            lease.add_metric([s.name], 1.0 if s.active else 0.0)
            if s.key is not None:
                key.add_metric([s.name], float(s.key))
            if s.vcenter_key is not None:
                vc_key.add_metric([s.name], float(s.vcenter_key))
        yield from (connected, state, lease, key, vc_key)
