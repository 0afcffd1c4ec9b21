"""Entry point: `python -m vebus_functions --config vebus.yaml`."""

import sys

from vebus.runtime import eventloop
from vebus.runtime.service import parse_settings
from vebus_functions import app

if __name__ == "__main__":
    settings = parse_settings("functions")
    sys.exit(eventloop.run(app.main(settings)))
