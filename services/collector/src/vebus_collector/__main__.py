"""Entry point: `python -m vebus_collector --config vebus.yaml`."""

import sys

from vebus.runtime import eventloop
from vebus.runtime.service import parse_settings
from vebus_collector import app

if __name__ == "__main__":
    sys.exit(eventloop.run(app.main(parse_settings("collector"))))
