"""A VEBA-style Knative Python function: a web server on $PORT that takes CloudEvents in
HTTP binary mode (ce- headers, the vSphere event as the JSON body).

It knows nothing of vebus: VEBA runs it as a Knative service, vebus as an `http:`
function. Written with the standard library's http.server so that it needs no package
(VEBA's templates use Flask and the cloudevents SDK; such a handler runs the same way).
"""

import json
import logging
import os
import ssl
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from pyVim.connect import SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
log = logging.getLogger("veba-python-http")

SECRET = json.loads(os.environ.get("VCENTER_SECRET", "{}"))
_lock = threading.Lock()
_si = None


def vcenter():
    """One vCenter session, made on first use and kept (VEBA functions do the same)."""
    global _si
    with _lock:
        if _si is None:
            url = urlsplit(SECRET["VCENTER_SERVER"])
            context = ssl.create_default_context()
            if not SECRET.get("VCENTER_CERTIFICATE_CHECK", True):
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            _si = SmartConnect(
                host=url.hostname,
                port=url.port or (443 if url.scheme == "https" else 80),
                user=SECRET["VCENTER_USER"],
                pwd=SECRET["VCENTER_PASSWORD"],
                protocol=url.scheme or "https",
                sslContext=context,
            )
        return _si


def annotate(event):
    data = event["data"]
    si = vcenter()
    vm = vim.VirtualMachine(data["Vm"]["Vm"]["Value"], si._stub)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    note = f"powered off by {data.get('UserName') or 'someone'} at {when}"
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(annotation=note)))
    log.info("%s: %s", data["Vm"]["Name"], note)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # readiness
        self.send_response(200)
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        event = {
            k[3:].lower(): unquote(v)
            for k, v in self.headers.items()
            if k.lower().startswith("ce-")
        }
        event["data"] = json.loads(body or b"null")
        log.info("received %s %s", event.get("type"), event.get("id"))
        try:
            if event.get("type", "").endswith(".VmPoweredOffEvent.v0"):
                annotate(event)
        except Exception as e:  # a 500: the sender retries
            log.exception("failed: %s", e)
            self.send_response(500)
            self.end_headers()
            return
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    log.info("listening on %d", port)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
