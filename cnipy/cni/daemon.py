"""The CNI node daemon: runs plugin calls in a warm process, so a call costs the kernel work and little else.

A Python plugin executable pays ~13 ms for the interpreter and ~0.2-0.4 s for `import pyroute2` on every call.
The daemon pays those once: it imports every registered plugin at start, then serves calls that the compiled
front (cnipy/cni/front.c, installed as the plugin executables) forwards over a unix socket (frames in
cnipy/cni/wire.py). Each call runs `skel.execute` exactly as the executable would, on its own thread: netlink
code enters namespaces with setns(2) on the calling thread, and a thread that ends takes any namespace state
with it. When the daemon is not running the front runs the Python plugin itself, with the same result.

One Python process runs one call at a time on the CPU (the GIL), so the daemon forks worker processes (two per
CPU, at most 8) after warming up; they share the listening socket and the warmed-up memory. The reply's first
bytes go out when a call starts: the front uses them to tell "never ran" (safe to run in Python) from "may have
run" when the daemon dies mid-call.

A process takes a connection only when it has a free call slot (--calls, default 2), so calls wait in the
socket's backlog for a free process rather than behind busy threads: several threads of one process contend for
its GIL, and a thread holding a lock (host-local's flock) while it waits for the GIL stalls all the others.

Errors never vanish: a malformed request gets a CNI error reply, and a client that stalls or disconnects only
loses its own connection; the front bounds every wait (CNIPY_FRONT_TIMEOUT) and reports code 11 when it ends.

    cnipy cni-daemon [--socket /run/cnipy/cni.sock] [--processes N] [--exit-on-code-change] [-v]
    (also: python -m cnipy.cni.daemon; contrib/cnipy-cni-daemon.service runs it under systemd)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import logging
import os
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from cnipy.cni import skel, wire
from cnipy.cni.errors import CniError, InternalError, InvalidConfig

DEFAULT_SOCKET = "/run/cnipy/cni.sock"
SOCKET_ENV = "CNIPY_CNI_SOCKET"
RECV_TIMEOUT = 30.0       # a client must deliver its whole request within this many seconds
SEND_TIMEOUT = 30.0       # and read our reply within this many
MAX_CONCURRENT = 2        # calls one process runs at once; further connections wait for a free process
SHUTDOWN_GRACE = 30.0     # on SIGTERM, how long in-flight calls may take to finish

log = logging.getLogger("cnipy.cni.daemon")
Resolver = Callable[[str], skel.Plugin]


class DaemonError(Exception):
    """The daemon can not start: another one holds the socket, or the socket directory is unsafe."""


def default_resolver(name: str) -> skel.Plugin:
    from cnipy.plugins import registry

    return registry.load(name)


def warm(resolve: Resolver = default_resolver) -> list[str]:
    """Import every registered plugin and the netlink layer now, so no call pays for it. Returns what loaded."""
    from cnipy.plugins import registry

    loaded = []
    for name in registry.PLUGINS:
        try:
            resolve(name)
            loaded.append(name)
        except Exception as exc:  # a plugin that fails to import still gets its error per call
            log.warning("plugin %s does not load: %s: %s", name, type(exc).__name__, exc)
    try:
        from cnipy.netlink.route import ipr

        with ipr(None) as sock:  # the first socket imports pyroute2's lazily loaded parts
            sock.link_lookup(ifname="lo")
    except Exception as exc:
        log.warning("netlink warm-up failed: %s: %s", type(exc).__name__, exc)
    return loaded


def _error_outcome(exc: CniError, stdin: bytes) -> wire.CallReply:
    return wire.CallReply(1, skel.error_json(exc, stdin), b"")


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    if size == 0:
        return b""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = conn.recv_into(view[got:], size - got)
        if n == 0:
            raise ConnectionError(f"peer closed after {got} of {size} bytes")
        got += n
    return bytes(buf)


class Daemon:
    """One listening socket; `serve_forever` until `stop`. Usable in a thread (tests) or as the main loop."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, *, resolve: Resolver = default_resolver,
                 max_concurrent: int = MAX_CONCURRENT, recv_timeout: float = RECV_TIMEOUT,
                 base_env: Mapping[str, str] | None = None) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.resolve = resolve
        self.recv_timeout = recv_timeout
        self.max_concurrent = max_concurrent
        self._slots = threading.BoundedSemaphore(max_concurrent)
        # The daemon's own environment minus the CNI variables; each call adds the caller's.
        src = os.environ if base_env is None else base_env
        self._base_env = {k: v for k, v in src.items() if not k.startswith(wire.FORWARDED_PREFIXES)}
        self._listener: socket.socket | None = None
        self._owner = True  # the process that bound the socket removes it; forked workers do not
        self._lock_fd = -1
        self._bound_inode = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = threading.Event()
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()
        self.calls = 0

    # -- set-up and tear-down -------------------------------------------------------------------------------

    def bind(self) -> None:
        directory = os.path.dirname(self.socket_path)
        _safe_directory(directory)
        self._lock_fd = os.open(self.socket_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise DaemonError(f"another cnipy daemon serves {self.socket_path}") from None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # stale: its daemon died (we hold the lock)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # created 0600, never briefly wider
        try:
            sock.bind(self.socket_path)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        self._bound_inode = os.stat(self.socket_path).st_ino
        sock.listen(128)
        sock.setblocking(False)  # several processes may wait on it; the losers of a race get EAGAIN
        self._listener = sock

    def stop(self) -> None:
        """Ask `serve_forever` to return (safe from any thread and from a signal handler)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop listening, remove the socket, let in-flight calls finish (up to `grace` seconds)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                if self._owner and os.stat(self.socket_path).st_ino == self._bound_inode:
                    os.unlink(self.socket_path)
        deadline = time.monotonic() + grace
        with self._workers_lock:
            workers = list(self._workers)
        for t in workers:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._lock_fd >= 0:
            if self._owner:
                with contextlib.suppress(OSError):
                    os.unlink(self.socket_path + ".lock")
            os.close(self._lock_fd)
            self._lock_fd = -1
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def fork_worker(self) -> int:
        """Fork a process that serves the same socket (one Python process runs one call at a time on the CPU).

        Returns the child's pid in the parent; the child serves until SIGTERM and exits without returning.
        Call it before serving: a process with running threads must not fork.
        """
        pid = os.fork()
        if pid:
            return pid
        code = 0
        try:
            _die_with_parent()
            self._owner = False
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)  # the inherited one is shared
            self._stopping.clear()
            self.serve_forever()
            self.close()
        except BaseException:
            log.exception("worker process failed")
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    # -- serving --------------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        listener = self._listener
        with _listener_poll(listener, self._wake_r) as poll:
            while not self._stopping.is_set():
                # Accept only with a free slot: while this process is full, connections wait in the socket's
                # backlog for a process that has one, instead of queueing behind busy threads here.
                if not self._slots.acquire(timeout=0.5):
                    continue
                accepted = False
                try:
                    for fd, _ in poll.poll():
                        if fd == listener.fileno() and not self._stopping.is_set():
                            accepted = accepted or self._accept(listener)
                finally:
                    if not accepted:
                        self._slots.release()

    def _accept(self, listener: socket.socket) -> bool:
        """Accept one connection and hand it, with the slot the caller holds, to a new thread."""
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return False  # another worker process took it
        except OSError as exc:  # EMFILE and friends: keep serving, the client sees a reset
            log.error("accept failed: %s", exc)
            time.sleep(0.01)
            return False
        t = threading.Thread(target=self._handle, args=(conn,), name="cni-call", daemon=True)
        with self._workers_lock:
            self._workers.add(t)
        t.start()
        return True

    def _handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(self.recv_timeout)
                reply = self._serve_one(conn)
                if reply is not None:
                    conn.settimeout(SEND_TIMEOUT)
                    conn.sendall(wire.encode_reply(reply)[len(wire.MAGIC):])
                    _drain(conn)
        except (OSError, ConnectionError) as exc:
            log.warning("client connection: %s", exc)
        except Exception:
            log.exception("bug while serving a call")
        finally:
            self._slots.release()
            with self._workers_lock:
                self._workers.discard(threading.current_thread())

    def _serve_one(self, conn: socket.socket) -> wire.CallReply | None:
        """Read, run, return the reply; its magic is sent already (the front reads it as "the call started")."""
        uid = _peer_uid(conn)
        if uid not in (0, os.geteuid()):
            log.warning("refused a call from uid %d", uid)
            conn.sendall(wire.MAGIC)
            return _error_outcome(CniError(f"cnipy daemon: uid {uid} may not call plugins", code=4), b"")
        try:
            first = conn.recv(wire.HEADER.size)
            if not first:
                return None  # connected and closed: a liveness probe
            header = first + _recv_exact(conn, wire.HEADER.size - len(first))
            length = wire.parse_header(header, wire.MAX_REQUEST)
            request = wire.decode_request(_recv_exact(conn, length))
        except wire.ProtocolError as exc:
            log.warning("malformed request: %s", exc)
            conn.sendall(wire.MAGIC)
            return _error_outcome(CniError("cnipy daemon: malformed request", str(exc), code=100), b"")
        except TimeoutError:
            log.warning("client sent no complete request within %.0f s", self.recv_timeout)
            return None
        conn.sendall(wire.MAGIC)  # from here on the call may change state
        started, cpu = time.perf_counter(), time.thread_time()
        reply = self.call(request)
        with self._workers_lock:
            self.calls += 1
        log.debug("%s %s -> %d in %.1f ms (%.1f ms CPU)", request.plugin, request.env.get("CNI_COMMAND", ""),
                  reply.exit_code, (time.perf_counter() - started) * 1e3, (time.thread_time() - cpu) * 1e3)
        return reply

    def call(self, request: wire.CallRequest) -> wire.CallReply:
        """Run one call in this thread, exactly as the plugin executable would."""
        try:
            plugin = self.resolve(request.plugin)
        except LookupError as exc:
            return _error_outcome(InvalidConfig(f"cnipy daemon: {exc}"), request.stdin)
        except Exception as exc:
            return _error_outcome(InternalError(f"plugin {request.plugin} does not load",
                                                f"{type(exc).__name__}: {exc}"[:300]), request.stdin)
        env = dict(self._base_env)
        env.update(wire.forwarded(request.env))
        outcome = skel.execute(plugin, env, request.stdin)
        return wire.CallReply(outcome.exit_code, outcome.stdout, outcome.stderr)


def _listener_poll(listener: socket.socket, wake_fd: int) -> select.epoll:
    """An epoll on the listener and the wake-up pipe. The listener is registered EPOLLEXCLUSIVE: of the worker
    processes waiting on the one socket, a connection wakes one instead of all of them (each woken process that
    loses the race for it costs ~0.1 ms CPU, measured: a tenth of the daemon's CPU for a small call)."""
    poll = select.epoll()
    try:
        poll.register(listener.fileno(), select.EPOLLIN | getattr(select, "EPOLLEXCLUSIVE", 0))
    except OSError:  # a kernel before 4.5: every waiter wakes, as with select
        poll.register(listener.fileno(), select.EPOLLIN)
    poll.register(wake_fd, select.EPOLLIN)
    return poll


def _drain(conn: socket.socket) -> None:
    """Read what a client sent beyond its request (only a malformed one does) until it closes: closing a unix
    socket with unread input resets it, and the client could lose the error reply."""
    conn.settimeout(1.0)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        for _ in range(16):
            if not conn.recv(65536):
                return


def _die_with_parent() -> None:
    """A worker gets SIGTERM when the process that forked it dies, so no orphan keeps serving."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:
        os._exit(0)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _safe_directory(directory: str) -> None:
    """The socket's directory: created 0700; an existing one must be ours and not writable by others."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=False)
        return
    except FileExistsError:
        pass
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise DaemonError(f"{directory} is not a directory")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise DaemonError(f"{directory} must be owned by uid {os.geteuid()} and not writable by others")


def _notify_ready() -> None:
    """Tell systemd (Type=notify) that the socket is up."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    addr = "\0" + path[1:] if path.startswith("@") else path
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", addr)


def code_stamp() -> int:
    """The newest modification time of the cnipy modules loaded now: it changes when the checkout is updated."""
    newest = 0
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == "cnipy" or name.startswith("cnipy.")) and path:
            with contextlib.suppress(OSError):
                newest = max(newest, os.stat(path).st_mtime_ns)
    return newest


def _watch_code(daemon: Daemon, interval: float = 2.0) -> None:
    """Stop the daemon within `interval` seconds of its code changing on disk, so that the service manager
    starts one that runs the new code (meanwhile the fronts run it in Python)."""
    start = code_stamp()

    def loop() -> None:
        while not daemon._stopping.wait(interval):
            if code_stamp() != start:
                log.info("cnipy's code changed on disk; stopping so that a fresh daemon serves it")
                daemon.stop()
                return

    threading.Thread(target=loop, name="code-watch", daemon=True).start()


def default_processes() -> int:
    """Two per CPU, at most 8: with few calls per process, fewer threads contend for each GIL (measured on a
    2-CPU machine, 100 bridge ADDs 8 at a time: 4 processes x 2 calls beat 2 x 4 and 8 x 1)."""
    return max(1, min(2 * (os.cpu_count() or 1), 8))


def serve(socket_path: str = DEFAULT_SOCKET, *, resolve: Resolver = default_resolver, processes: int = 1,
          calls: int = MAX_CONCURRENT, exit_on_code_change: bool = False) -> None:
    """Warm up, listen on `socket_path` with `processes` processes, serve until SIGTERM or SIGINT (or, with
    `exit_on_code_change`, until cnipy's code changes on disk), then remove the socket. Call from the main
    thread (it installs signal handlers)."""
    daemon = Daemon(socket_path, resolve=resolve, max_concurrent=calls)
    loaded = warm(resolve)
    # What is loaded now lives as long as the daemon: keep it out of the cyclic GC's scans (~7% of a bridge ADD's
    # CPU, measured) and let forked workers share its pages. Calls allocate many short-lived netlink objects.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 50, 100)
    daemon.bind()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        daemon.stop()

    previous: dict[int, Any] = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    children: list[int] = []
    try:
        if threading.active_count() == 1:
            children = [daemon.fork_worker() for _ in range(processes - 1)]
        elif processes > 1:
            log.warning("threads are running after warm-up; serving from one process")
        if exit_on_code_change:
            _watch_code(daemon)
        log.info("serving %s with %d process(es) (plugins: %s)", daemon.socket_path, len(children) + 1,
                 ", ".join(loaded) or "none")
        _notify_ready()
        daemon.serve_forever()
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        daemon.close()
        _reap(children, SHUTDOWN_GRACE + 5)
        for s, h in previous.items():
            signal.signal(s, h)
        log.info("stopped after %d calls in the main process", daemon.calls)


def _reap(children: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(children)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            pending.discard(pid)
        time.sleep(0.05)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnipy cni-daemon", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default=os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET,
                        help=f"unix socket to listen on (default: ${SOCKET_ENV} or {DEFAULT_SOCKET})")
    parser.add_argument("--processes", type=int, default=default_processes(),
                        help="processes serving calls (default: 2 per CPU, at most 8)")
    parser.add_argument("--calls", type=int, default=MAX_CONCURRENT,
                        help=f"calls one process runs at once (default {MAX_CONCURRENT})")
    parser.add_argument("--exit-on-code-change", action="store_true",
                        help="exit when cnipy's code changes on disk (for a service manager that restarts it)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every call")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="cnipy-cni-daemon[%(process)d]: %(levelname)s %(message)s", stream=sys.stderr)
    try:
        serve(args.socket, processes=max(1, args.processes), calls=max(1, args.calls),
              exit_on_code_change=args.exit_on_code_change)
    except DaemonError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:  # e.g. a socket path over the 107-byte limit, or no permission
        log.error("cannot serve %s: %s", args.socket, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
