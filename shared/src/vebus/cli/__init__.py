"""The `vebus` command: run the bus locally, inspect it, manage dead letters."""

from __future__ import annotations

import importlib

import click

__all__ = ["main"]


#: subcommand -> (module, attribute): imported only when that command runs, so `vebus
#: --help` and every command start without loading the others (pyvmomi, matplotlib, ...)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("vebus.cli.up", "up"),
    "demo": ("vebus.cli.demo", "demo"),
    "tail": ("vebus.cli.tail", "tail"),
    "config": ("vebus.cli.config_cmd", "config"),
    "routes": ("vebus.cli.routes", "routes"),
    "dlq": ("vebus.cli.dlq", "dlq"),
    "replay": ("vebus.cli.replay", "replay"),
    "stats": ("vebus.cli.stats", "stats"),
    "status": ("vebus.cli.status", "status"),
    "fn": ("vebus.cli.fn", "fn"),
    "subscriber": ("vebus.cli.subscriber", "subscriber"),
    "tls": ("vebus.cli.tls", "tls"),
    "console": ("vebus.cli.console", "console"),
}


class _LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module = importlib.import_module(target[0])
        command: click.Command = getattr(module, target[1])
        return command

    def invoke(self, ctx: click.Context) -> object:
        """Run the command; a Ctrl-C before it reached its own handling exits 130 quietly
        (click would print "Aborted!" and exit 1, as for a refused confirmation)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            ctx.exit(130)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="vebus", prog_name="vebus")
def main() -> None:
    """vebus: the vSphere event bus.

    Follows vCenter events, routes them with EventBridge-style patterns and delivers
    them durably (NATS JetStream) to webhooks and other sinks. Start with `vebus up`.
    """
