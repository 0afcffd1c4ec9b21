"""vebus console: a web console that reads the bus like the `vebus` command does.

Pages (server-rendered with Jinja2, a small script of our own for the live view; every
asset ships in this package): live events over server-sent events, the history in
VEBUS_EVENTS, routes (pause, apply, try an event), dead letters (replay and purge through
the deadletter service's API), and the status of every replica. Sign-in with a password or
a bearer token, viewer and operator roles (docs/console.md).
"""
