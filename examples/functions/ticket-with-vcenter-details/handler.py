"""Open a ticket for a powered-off VM, with its host, datastores and owner from vCenter."""

import os

from vebus_functions import Reject, RetryLater


def owner_of(vm, content, attribute):
    keys = [f.key for f in content.customFieldsManager.field or [] if f.name == attribute]
    for value in vm.customValue or []:
        if value.key in keys:
            return value.value
    return None


def handle(event, ctx):
    data = event.data
    vm = ctx.object(data["Vm"]["Vm"])
    ticket = {
        "short_description": f"VM {vm.name} was powered off",
        "description": data.get("FullFormattedMessage", ""),
        "vm": vm.name,
        "vm_id": data["Vm"]["Vm"]["Value"],
        "host": vm.runtime.host.name if vm.runtime.host else None,
        "datastores": sorted(ds.name for ds in vm.datastore),
        "owner": owner_of(vm, ctx.content, os.environ["OWNER_ATTRIBUTE"]),
        "power_state": str(vm.runtime.powerState),
        "by": data.get("UserName") or None,
        "event_id": event.id,
        "vcenter": event.source,
    }
    r = ctx.request(
        "POST",
        os.environ["TICKET_URL"],
        json=ticket,
        headers={"Authorization": f"Bearer {ctx.secrets['TICKET_TOKEN']}"},
    )
    if r.status == 429 or r.status >= 500:
        raise RetryLater(f"ticket system answered {r.status}")
    if not r.ok:
        raise Reject(f"ticket system refused the ticket: {r.status} {r.text[:200]}")
    ctx.log.info("ticket for %s opened (%d)", vm.name, r.status)
    return {"vm": vm.name, "ticket_status": r.status}
