"""Entry point: `python -m vebus_deadletter --config vebus.yaml`."""

import asyncio
import sys

from vebus.runtime.service import parse_settings
from vebus_deadletter import app

if __name__ == "__main__":
    settings = parse_settings("deadletter")
    sys.exit(asyncio.run(app.main(settings)))
