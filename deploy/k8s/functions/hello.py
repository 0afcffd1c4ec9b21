"""An example function for Kubernetes: its reply names the event it ran on.

Route to it with `sink: {kind: function, function: hello}`; put your own functions beside
it (kustomization.yaml's vebus-functions config map) and declare them in vebus.yaml.
"""

from __future__ import annotations

from typing import Any


def handle(event: Any, ctx: Any) -> dict[str, str]:
    return {"seen": event.id, "type": event.type}
