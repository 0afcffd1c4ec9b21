"""Entry point: `python -m vebus_dispatcher --config vebus.yaml`."""

import asyncio
import sys

from vebus.runtime.service import parse_settings
from vebus_dispatcher import app

if __name__ == "__main__":
    settings = parse_settings("dispatcher")
    sys.exit(asyncio.run(app.main(settings)))
