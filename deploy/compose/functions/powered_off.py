"""A function compose runs: each VM powered off gives a reply event saying which one.

Routes can match the reply (source vebus://functions/powered-off); replace it with your
own functions (docs/functions.md).
"""

from __future__ import annotations

from typing import Any


def handle(event: Any, ctx: Any) -> dict[str, Any]:
    vm = (event.data.get("Vm") or {}).get("Name") if isinstance(event.data, dict) else None
    ctx.log.info("%s powered off", vm)
    return {"vm": vm, "event": event.id}
