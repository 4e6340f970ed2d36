"""The grading fork server: its own Python program, which imports math-verify once and forks workers.

Workers must never run the caller's code. multiprocessing's ``spawn`` and ``forkserver`` prepare
every child by re-importing the caller's ``__main__``: a script without an
``if __name__ == "__main__":`` guard then runs again in every worker, and a script piped on stdin
cannot be re-imported at all. This server is started as a program of its own (``python -c`` calling
:func:`serve`, with the caller's ``sys.path`` and nothing of its ``__main__``), imports and warms up
math-verify once, then forks one worker per request, so a fresh or replacement worker costs a
``fork()``, not a two-second import of sympy.

Protocol (POSIX; one ``SOCK_SEQPACKET`` control socket per server):

* a request is the worker's memory limit in bytes (``b"0"``: none) with two file descriptors
  attached: the worker's end of its :class:`~multiprocessing.connection.Connection`, and the write
  end of a status pipe;
* the server forks; on the status pipe it writes the worker's pid at once, and its exit code
  (negative: killed by that signal) once it has reaped it;
* the server exits when the control socket closes (the grading process ended), and its workers then
  get SIGKILL (:func:`.worker.main` asks for that).

The server's stdout and stderr go to a log file; its tail is quoted when a worker cannot start.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection

from flopmatch.errors import FlopmatchError

STARTUP_LIMIT = 180.0  # seconds the server may take to import sympy and math-verify
_INT = struct.Struct("q")
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[2]); "
    "from flopmatch.grading.server import serve; serve(int(sys.argv[1]))"
)


class WorkerStartError(FlopmatchError, RuntimeError):
    """No grading worker could be started; the message carries the real cause."""


# --------------------------------------------------------------------------- grading process side


class WorkerProcess:
    """One forked worker as the grading process sees it: its pid, its connection, its exit code."""

    def __init__(self, pid: int, conn: Connection, status_fd: int):
        self.pid = pid
        self.conn = conn
        self.exitcode: int | None = None
        self._status_fd: int | None = status_fd  # None once the server has said all it will say

    def _read_status(self, timeout: float) -> None:
        if self._status_fd is None or self.exitcode is not None:
            return
        value = _read_int(self._status_fd, timeout)
        if value is _PENDING:
            return
        self.exitcode = value  # None: the server went away without reaping it
        os.close(self._status_fd)
        self._status_fd = None

    def is_alive(self) -> bool:
        self._read_status(0.0)
        return self._status_fd is not None

    def join(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` seconds for the worker to exit (then :attr:`exitcode` is set)."""
        self._read_status(timeout)

    def kill(self) -> None:
        if self.is_alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self.conn.close()
        if self._status_fd is not None:
            os.close(self._status_fd)
            self._status_fd = None


class ForkServer:
    """A running fork server; :func:`shared_server` keeps one per grading process."""

    def __init__(self) -> None:
        if not sys.executable:
            raise WorkerStartError("cannot start grading workers: sys.executable is empty (embedded Python?)")
        self.owner = os.getpid()
        self.log = tempfile.TemporaryFile()
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno()), json.dumps(sys.path)],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=self.log,
            )
        finally:
            theirs.close()
        self._lock = threading.Lock()

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of what the server and its workers wrote to stdout and stderr."""
        size = os.fstat(self.log.fileno()).st_size
        text = os.pread(self.log.fileno(), chars, max(0, size - chars)).decode(errors="replace")
        return text.strip()

    def start_worker(self, memory_limit: int | None) -> WorkerProcess:
        """Fork a worker (waits for the server's first warm-up); :class:`WorkerStartError` when the
        server is gone, with its exit code and its last output."""
        mine, theirs = multiprocessing.Pipe(duplex=True)
        status_r, status_w = os.pipe()
        try:
            with self._lock:
                socket.send_fds(self._control, [str(memory_limit or 0).encode()], [theirs.fileno(), status_w])
        except OSError:
            pass  # the server is gone: reading the pid below says so
        finally:
            theirs.close()
            os.close(status_w)
        pid = _read_int(status_r, STARTUP_LIMIT)
        if pid is None or pid is _PENDING:
            os.close(status_r)
            mine.close()
            raise WorkerStartError(self._failure(timed_out=pid is _PENDING))
        return WorkerProcess(pid, mine, status_r)

    def _failure(self, *, timed_out: bool) -> str:
        if timed_out:
            self.close()
            what = f"did not fork a worker within {STARTUP_LIMIT:g}s"
        else:
            self.process.wait(5.0)
            what = f"exited (code {self.process.returncode})"
        return f"the grading fork server {what}; its output:\n{self.log_tail() or '(none)'}"

    def close(self) -> None:
        """Stop the server (its workers get SIGKILL)."""
        self._control.close()
        try:
            self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


_shared_lock = threading.Lock()
_shared: list[ForkServer] = []


def shared_server() -> ForkServer:
    """The process's fork server, started on first use and again when it has died (or when this
    process is a fork of the one that started it)."""
    with _shared_lock:
        if _shared and (_shared[0].owner != os.getpid() or not _shared[0].alive()):
            old = _shared.pop()
            if old.owner == os.getpid():
                old.close()
        if not _shared:
            _shared.append(ForkServer())
        return _shared[0]


_PENDING = object()  # no value yet


def _read_int(fd: int, timeout: float) -> int | None | object:
    """The next int on a status pipe; ``None`` at end of file; :data:`_PENDING` after ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < _INT.size:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return _PENDING if not data else None
        chunk = os.read(fd, _INT.size - len(data))
        if not chunk:
            return None
        data += chunk
    return _INT.unpack(data)[0]


# --------------------------------------------------------------------------- server side


def serve(control_fd: int) -> None:
    """The server's main loop (see the module docstring); returns when the control socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent handles it
    control = socket.socket(fileno=control_fd)
    from flopmatch.grading import worker  # math-verify and sympy, once for every worker

    worker.warm_up()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wake-up pipe is what matters
    status: dict[int, int] = {}  # pid -> write end of its status pipe
    while True:
        ready, _, _ = select.select([control, wake_r], [], [])
        if wake_r in ready:
            while _drained(wake_r):
                pass
            _reap(status)
        if control not in ready:
            continue
        message, fds, _flags, _addr = socket.recv_fds(control, 64, 2)
        if not message:
            return
        if len(fds) != 2:  # pragma: no cover - only our own client writes here
            for fd in fds:
                os.close(fd)
            continue
        conn_fd, status_fd = fds
        pid = os.fork()
        if pid == 0:
            control.close()
            for fd in (wake_r, wake_w, status_fd, *status.values()):
                os.close(fd)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os._exit(_run_worker(worker.main, conn_fd, int(message)))
        os.close(conn_fd)
        status[pid] = status_fd
        _write_int(status_fd, pid)


def _run_worker(main, conn_fd: int, memory_limit: int) -> int:  # noqa: ANN001 - worker.main
    import traceback

    code = 0
    try:
        main(Connection(conn_fd), memory_limit or None)
    except BaseException:  # noqa: BLE001 - the log is where a worker's last words go
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _drained(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _reap(status: dict[int, int]) -> None:
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status.pop(pid, None)
        if fd is not None:
            _write_int(fd, os.waitstatus_to_exitcode(wait_status))
            os.close(fd)


def _write_int(fd: int, value: int) -> None:
    try:
        os.write(fd, _INT.pack(value))
    except OSError:  # the grading process no longer listens for this worker
        pass
