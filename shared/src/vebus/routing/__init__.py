"""Routes at run time: the router, the route store in NATS KV and the one route source every
service reads.
"""
