"""Entry point: `python -m vebus_filter --config vebus.yaml`."""

import asyncio
import sys

from vebus.runtime.service import parse_settings
from vebus_filter import app

if __name__ == "__main__":
    sys.exit(asyncio.run(app.main(parse_settings("filter"))))
