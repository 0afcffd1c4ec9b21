"""Entry point: `python -m vebus_deadletter --config vebus.yaml`."""

import sys

from vebus.runtime import eventloop
from vebus.runtime.service import parse_settings
from vebus_deadletter import app

if __name__ == "__main__":
    settings = parse_settings("deadletter")
    sys.exit(eventloop.run(app.main(settings)))
