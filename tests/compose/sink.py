"""The compose test's HTTP sink, run in a container on the compose network (`http://sink:8000/`,
from the vebus/cli image: standard library only).

Every POST is recorded: the sender's address (which dispatcher replica delivered it), the
CloudEvent headers, the VM name and message of the event's data, and whether it carried
`Authorization: Bearer $SINK_TOKEN`; it is answered 200 when it did, 401 when not (so a
sink secret that never reached the dispatcher shows as refused deliveries, then a dead
letter). `GET /records?after=N` returns the records from index N as JSON.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = os.environ["SINK_TOKEN"]
RECORDS: list[dict[str, Any]] = []
LOCK = threading.Lock()


def _data(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = _data(body)
        vm = data.get("Vm") if isinstance(data.get("Vm"), dict) else {}
        ok = self.headers.get("Authorization") == f"Bearer {TOKEN}"
        record = {
            "peer": self.client_address[0],
            "authorized": ok,
            "id": self.headers.get("ce-id"),
            "type": self.headers.get("ce-type"),
            "vm": (vm or {}).get("Name"),
            "message": data.get("Message") or data.get("FullFormattedMessage"),
        }
        with LOCK:
            RECORDS.append(record)
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        after = int(query.get("after", ["0"])[0])
        with LOCK:
            body = json.dumps(RECORDS[after:]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
