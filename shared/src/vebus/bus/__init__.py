"""The wire: names on NATS, the CloudEvent and its bindings, publishing, consuming, streams, KV
and dead-letter records.
"""
