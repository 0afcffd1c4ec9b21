"""Entry point: `python -m vebus_console --config vebus.yaml`."""

import asyncio
import sys

from vebus.runtime.service import parse_settings
from vebus_console import app

if __name__ == "__main__":
    settings = parse_settings("console")
    sys.exit(asyncio.run(app.main(settings)))
