"""Opening vebus's NATS KV buckets, creating them when missing.

Every service keeps some state in a KV bucket (checkpoints, leases, rate schedules, replay
jobs, routes). They all open it the same way: bind to the bucket if it exists, else create
it with vebus's defaults (file storage, one revision of history unless asked, the stream
replica count the config sets for the cluster, so that state survives a node loss exactly
as the streams do). Two replicas starting together may both find the bucket missing: the
second create either succeeds (JetStream accepts an identical config) or fails because the
first one won, and binding again settles it.
"""

from __future__ import annotations

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, BucketNotFoundError
from nats.js.kv import KeyValue

__all__ = ["ensure_bucket"]


async def ensure_bucket(
    js: JetStreamContext,
    bucket: str,
    *,
    replicas: int,
    description: str,
    history: int = 1,
    ttl: float | None = None,
) -> KeyValue:
    """The KV bucket `bucket`, created with these settings when it does not exist.

    An existing bucket is used as it is (its settings are not compared or changed: a
    bucket that an operator resized or re-replicated keeps what they chose).
    """
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                description=description,
                history=history,
                ttl=ttl,
                storage=StorageType.FILE,
                replicas=replicas,
            )
        )
    except (APIError, nats.errors.Error):
        # another process created it between our look-up and our create, with settings
        # that differ in some detail (a newer vebus, an operator): use theirs
        return await js.key_value(bucket)
