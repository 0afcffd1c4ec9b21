"""Entry point: `python -m vebus_functions --config vebus.yaml`."""

import asyncio
import sys

from vebus.runtime.service import parse_settings
from vebus_functions import app

if __name__ == "__main__":
    settings = parse_settings("functions")
    sys.exit(asyncio.run(app.main(settings)))
