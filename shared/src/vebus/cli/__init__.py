"""The `vebus` command: run the bus locally, inspect it, manage dead letters."""

from __future__ import annotations

import click

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vebus", prog_name="vebus")
def main() -> None:
    """vebus: the vSphere event bus.

    Follows vCenter events, routes them with EventBridge-style patterns and delivers
    them durably (NATS JetStream) to webhooks and other sinks. Start with `vebus up`.
    """


def _register() -> None:
    from vebus.cli import config_cmd, demo, dlq, tail, up

    main.add_command(up.up)
    main.add_command(demo.demo)
    main.add_command(tail.tail)
    main.add_command(config_cmd.config)
    main.add_command(dlq.dlq)


_register()
