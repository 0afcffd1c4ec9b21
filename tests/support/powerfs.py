"""A FUSE filesystem that loses what was not fsynced when its "power" is cut.

SIGKILL cannot show what a power cut does to nats-server: a killed process's writes are in
the kernel's page cache and reach the disk anyway. This passthrough keeps every file's
unsynced data in its own memory instead (the page cache it stands in for) and writes it to
the backing directory only on fsync; `cut` drops all of it at once, as a power loss drops
the page cache of every node on one host.

    python -m tests.support.powerfs BACKING MOUNTPOINT CONTROL_SOCKET

mounts BACKING at MOUNTPOINT (libfuse 3 through mfusepy; `direct_io` and no attribute
caching, so the kernel keeps no copy of its own) and answers one-line commands on the Unix
socket CONTROL_SOCKET: `cut` (drop every unsynced byte; answers how much), `stats`
(JSON: dirty bytes and files, fsyncs, cuts). `PowerFs` (below) runs it from a test.

The model, deliberately kind to the program under it (so a loss it shows, a real power cut
shows too):
- file data is durable only after `fsync`/`fdatasync` of that file, or when the file is
  renamed (ext4's auto_da_alloc flushes a file renamed over another, so write-then-rename
  survives); data written and never synced is gone after a cut, the file keeping its
  synced length;
- metadata (create, mkdir, rename, unlink, truncate) is durable at once, as on a
  journalling filesystem once its journal committed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PowerFs", "available", "main"]

PAGE = 4096


@dataclass
class _Dirty:
    """One file's unsynced data: whole pages, and its length as the program sees it."""

    pages: dict[int, bytearray] = field(default_factory=dict)
    size: int = 0


class _Ops:
    """The filesystem operations (mfusepy's high-level, path-based API), one lock for all."""

    use_ns = True

    def __init__(self, backing: str) -> None:
        self.root = backing
        self.lock = threading.RLock()
        #: backing inode -> its unsynced data
        self.dirty: dict[int, _Dirty] = {}
        #: file handle -> (backing fd, backing inode)
        self.handles: dict[int, tuple[int, int]] = {}
        self.fsyncs = 0
        self.cuts = 0
        self.dropped = 0

    # ------------------------------------------------------------ helpers

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _flush(self, ino: int, fd: int) -> None:
        """Write `ino`'s dirty pages through `fd` (open on that inode) to the backing file."""
        d = self.dirty.pop(ino, None)
        if d is None:
            return
        if os.fstat(fd).st_size > d.size:
            os.ftruncate(fd, d.size)
        for n, page in sorted(d.pages.items()):
            start = n * PAGE
            if start >= d.size:
                continue
            os.pwrite(fd, bytes(page[: min(PAGE, d.size - start)]), start)
        if os.fstat(fd).st_size < d.size:
            os.ftruncate(fd, d.size)

    def _flush_path(self, real: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(real)
            if st.st_ino in self.dirty:
                fd = os.open(real, os.O_WRONLY)
                try:
                    self._flush(st.st_ino, fd)
                finally:
                    os.close(fd)

    def cut(self) -> int:
        with self.lock:
            lost = sum(len(d.pages) * PAGE for d in self.dirty.values())
            self.dirty.clear()
            self.cuts += 1
            self.dropped += lost
            return lost

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {
                "dirty_files": len(self.dirty),
                "dirty_bytes": sum(len(d.pages) * PAGE for d in self.dirty.values()),
                "fsyncs": self.fsyncs,
                "cuts": self.cuts,
                "dropped_bytes": self.dropped,
            }

    # ------------------------------------------------------------ metadata

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self.lock:
            st = os.lstat(self._p(path))
            out = {k: getattr(st, k) for k in (
                "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino",
                "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
            )}  # fmt: skip
            out["st_atime"], out["st_mtime"], out["st_ctime"] = (
                st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
            )  # fmt: skip
            if (d := self.dirty.get(st.st_ino)) is not None:
                out["st_size"] = d.size
            return out

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._p(path), amode):
            raise _err(errno.EACCES)
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._p(path))]

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._p(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._p(path))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._p(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._p(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._p(path), ns=times) if times else os.utime(self._p(path))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._p(path))
        return {k: getattr(sv, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax",
        )}  # fmt: skip

    def unlink(self, path: str) -> int:
        with self.lock:
            real = self._p(path)
            st = os.lstat(real)
            os.unlink(real)
            if st.st_nlink <= 1:
                self.dirty.pop(st.st_ino, None)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self.lock:
            src, dst = self._p(old), self._p(new)
            self._flush_path(src)  # write-then-rename survives (auto_da_alloc)
            replaced = None
            with contextlib.suppress(FileNotFoundError):
                replaced = os.lstat(dst)
            os.rename(src, dst)
            if replaced is not None and replaced.st_nlink <= 1:
                self.dirty.pop(replaced.st_ino, None)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self.lock:
            real = self._p(path)
            self._flush_path(real)
            os.truncate(real, length)
        return 0

    # ------------------------------------------------------------ data

    def _open(self, real: str, flags: int, mode: int = 0o644) -> int:
        # the program's O_APPEND and O_SYNC/O_DSYNC are not passed on: writes land at the
        # offsets the kernel gives, and an O_SYNC program is served by fsync (nats-server
        # calls fsync itself)
        flags &= ~(os.O_APPEND | os.O_SYNC | os.O_DSYNC)
        flags = (flags & ~os.O_ACCMODE) | os.O_RDWR if flags & os.O_ACCMODE else flags
        fd = os.open(real, flags, mode)
        with self.lock:
            ino = os.fstat(fd).st_ino
            if flags & os.O_TRUNC:
                self.dirty.pop(ino, None)
            self.handles[fd] = (fd, ino)
        return fd

    def open(self, path: str, flags: int) -> int:
        return self._open(self._p(path), flags)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return self._open(self._p(path), os.O_CREAT | os.O_RDWR | os.O_TRUNC, mode)

    def _page(self, d: _Dirty, fd: int, n: int) -> bytearray:
        page = d.pages.get(n)
        if page is None:
            page = bytearray(os.pread(fd, PAGE, n * PAGE).ljust(PAGE, b"\0"))
            d.pages[n] = page
        return page

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.lock:
            fd, ino = self.handles[fh]
            d = self.dirty.get(ino)
            if d is None:
                d = self.dirty[ino] = _Dirty(size=os.fstat(fd).st_size)
            pos, view = offset, memoryview(data)
            while view:
                n, at = divmod(pos, PAGE)
                take = min(PAGE - at, len(view))
                self._page(d, fd, n)[at : at + take] = view[:take]
                view, pos = view[take:], pos + take
            d.size = max(d.size, offset + len(data))
            return len(data)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.lock:
            fd, ino = self.handles[fh]
            d = self.dirty.get(ino)
            if d is None:
                return os.pread(fd, size, offset)
            end = min(offset + size, d.size)
            out = bytearray()
            pos = offset
            while pos < end:
                n, at = divmod(pos, PAGE)
                take = min(PAGE - at, end - pos)
                page = d.pages.get(n)
                if page is None:
                    out += os.pread(fd, take, pos).ljust(take, b"\0")
                else:
                    out += page[at : at + take]
                pos += take
            return bytes(out)

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self.lock:
            fd, ino = self.handles[fh]
            self._flush(ino, fd)
            self.fsyncs += 1
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # close(2) is not a sync

    def release(self, path: str, fh: int) -> int:
        with self.lock:
            entry = self.handles.pop(fh, None)
        if entry is not None:
            os.close(entry[0])
        return 0


def _err(code: int) -> OSError:
    from mfusepy import FuseOSError

    return FuseOSError(code)


def _wrap(ops: _Ops) -> Any:
    """The operations as an mfusepy `Operations`, OSErrors turned into errno answers."""
    from mfusepy import FuseOSError, Operations

    class Ops(Operations):  # type: ignore[misc]
        use_ns = True

    def wrapped(name: str) -> Any:
        method = getattr(ops, name)

        def call(self: Any, *args: Any) -> Any:
            try:
                return method(*args)
            except FuseOSError:
                raise
            except OSError as e:
                raise FuseOSError(e.errno or errno.EIO) from None
            except KeyError:
                raise FuseOSError(errno.EBADF) from None

        return call

    for name in (
        "getattr", "access", "readdir", "mkdir", "rmdir", "chmod", "chown", "utimens",
        "statfs", "unlink", "rename", "truncate", "open", "create", "write", "read", "fsync",
        "fsyncdir", "flush", "release",
    ):  # fmt: skip
        setattr(Ops, name, wrapped(name))
    return Ops()


def _serve_control(ops: _Ops, path: str) -> None:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline().decode().strip()
            if line == "cut":
                answer: dict[str, Any] = {"dropped_bytes": ops.cut()}
            elif line == "stats":
                answer = ops.stats()
            else:
                answer = {"error": f"unknown command {line!r}"}
            self.wfile.write(json.dumps(answer).encode() + b"\n")

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socketserver.UnixStreamServer(path, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    backing, mountpoint, control = (argv if argv is not None else sys.argv[1:])[:3]
    from mfusepy import FUSE

    ops = _Ops(os.path.abspath(backing))
    _serve_control(ops, control)
    FUSE(
        _wrap(ops), mountpoint, foreground=True, nothreads=False, direct_io=True,
        attr_timeout=0, entry_timeout=0, negative_timeout=0, fsname="powerfs",
    )  # fmt: skip
    return 0


# ---------------------------------------------------------------------------- for tests


def available() -> str | None:
    """None when a PowerFs can be mounted here, else one line saying why not."""
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian's fuse3 package; scripts/setup installs it as root)"
    try:
        import mfusepy  # noqa: F401  (loads libfuse3)
    except (ImportError, OSError) as e:
        return f"mfusepy cannot load libfuse 3 ({e})"
    return None


class PowerFs:
    """A mounted powerfs process: `mountpoint` to store in, `cut()` for a power loss."""

    def __init__(self, workdir: Path) -> None:
        self.backing = workdir / "disk"
        self.mountpoint = workdir / "mnt"
        self.control = workdir / "powerfs.sock"
        self.log_path = workdir / "powerfs.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PowerFs:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 15.0) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.powerfs", str(self.backing),
                 str(self.mountpoint), str(self.control)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parents[2],
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"powerfs did not mount: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        while not self.control.exists():
            time.sleep(0.05)

    def _ask(self, command: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.control))
            s.sendall(command.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        answer: dict[str, Any] = json.loads(data)
        return answer

    def cut(self) -> int:
        """Drop every unsynced byte (stop the programs writing here first); returns how many."""
        return int(self._ask("cut")["dropped_bytes"])

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._ask("stats").items()}

    def stop(self) -> None:
        if self.proc is None:
            return
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True,
                       check=False)  # fmt: skip
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def mounted(workdir: Path) -> Iterator[PowerFs]:
    with PowerFs(workdir) as fs:
        yield fs


if __name__ == "__main__":
    raise SystemExit(main())
