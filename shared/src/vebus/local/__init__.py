"""Running vebus on one machine: `vebus up`'s supervisor, the embedded nats-server and vCenter
simulator, local NATS logins.
"""
