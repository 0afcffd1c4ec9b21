"""Entry point: `python -m vebus_collector --config vebus.yaml`."""

import asyncio
import sys

from vebus.runtime.service import parse_settings
from vebus_collector import app

if __name__ == "__main__":
    sys.exit(asyncio.run(app.main(parse_settings("collector"))))
