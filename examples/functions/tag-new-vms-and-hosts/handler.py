"""Tag each new VM and each host added to vCenter (vSphere tags, created on first use)."""

import os


def handle(event, ctx):
    data = event.data
    if event.type.endswith(".HostAddedEvent.v0"):
        target, tag = data["Host"]["Host"], os.environ["HOST_TAG"]
    else:
        target, tag = data["Vm"]["Vm"], os.environ["VM_TAG"]
    category = os.environ["TAG_CATEGORY"]
    tag_id = ctx.tags.tag(tag, category=category)  # created when missing
    ctx.tags.attach(tag_id, target)  # attaching twice changes nothing: retries are safe
    ctx.log.info("tagged %s %s with %s/%s", target["Type"], target["Value"], category, tag)
    return {"object": target, "tag": f"{category}/{tag}"}
