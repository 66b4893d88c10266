"""A small etcd v3 client over the JSON gRPC gateway (standard library only), and a fake with the same semantics.

Only what the overlay needs: range, put, delete, one-compare-set transactions, leases (grant, keep-alive, revoke)
and a streaming watch on a prefix. Keys and values are text (UTF-8); the gateway wants them in base64 and sends
64-bit integers as strings, which is handled here.

    EtcdError                any failed call
    ├── EtcdUnavailable      no answer (connection refused, reset, timed out): retry later
    └── LeaseNotFound        the lease expired or was revoked: grant a new one
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit


class EtcdError(Exception):
    pass


class EtcdUnavailable(EtcdError):
    pass


class LeaseNotFound(EtcdError):
    pass


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Event:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue


@dataclass(frozen=True)
class Compare:
    """One transaction guard: `target` of `key` equals `value` (CREATE 0 means: the key does not exist)."""

    key: str
    target: Literal["CREATE", "MOD", "VALUE"]
    value: int | str


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


Op = Put | Delete


class Watch(Protocol):
    def __iter__(self) -> Iterator[list[Event]]: ...
    def close(self) -> None: ...


class Etcd(Protocol):
    """The seam: the real client and the fake both implement it."""

    def get(self, key: str, *, prefix: bool = False) -> tuple[list[KeyValue], int]: ...
    def put(self, key: str, value: str, *, lease: int = 0) -> int: ...
    def delete(self, key: str) -> int: ...
    def txn(self, compares: list[Compare], success: list[Op], failure: list[Op] | None = None) -> bool: ...
    def grant(self, ttl: int) -> int: ...
    def keepalive(self, lease_id: int) -> int: ...
    def revoke(self, lease_id: int) -> None: ...
    def watch(self, key: str, *, prefix: bool = False, start_revision: int = 0) -> Watch: ...


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _b64_end(key: str) -> str:
    """The range end that selects every key starting with `key` (etcd's convention), in base64."""
    raw = bytearray(key.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return base64.b64encode(bytes(raw[: i + 1])).decode()
    return base64.b64encode(b"\0").decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode("utf-8", "replace")


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(_unb64(raw.get("key")), _unb64(raw.get("value")), int(raw.get("create_revision", 0)),
                    int(raw.get("mod_revision", 0)), int(raw.get("lease", 0)))


def _op_json(op: Op) -> dict[str, Any]:
    if isinstance(op, Put):
        body: dict[str, Any] = {"key": _b64(op.key), "value": _b64(op.value)}
        if op.lease:
            body["lease"] = str(op.lease)
        return {"request_put": body}
    return {"request_delete_range": {"key": _b64(op.key)}}


def _compare_json(c: Compare) -> dict[str, Any]:
    out: dict[str, Any] = {"key": _b64(c.key), "target": c.target, "result": "EQUAL"}
    if c.target == "CREATE":
        out["create_revision"] = str(c.value)
    elif c.target == "MOD":
        out["mod_revision"] = str(c.value)
    else:
        out["value"] = _b64(str(c.value))
    return out


class Client:
    """etcd v3 over HTTP/JSON: `Client("http://10.0.0.1:2379")`. Every call opens a short connection."""

    def __init__(self, endpoint: str, timeout: float = 5.0) -> None:
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if parts.scheme != "http" or not parts.hostname:
            raise EtcdError(f"unsupported etcd endpoint {endpoint!r} (http://host:port)")
        self.host, self.port = parts.hostname, parts.port or 2379
        self.timeout = timeout

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", f"/v3/{path}", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EtcdUnavailable(f"etcd {self.host}:{self.port} {path}: {exc}") from exc
        finally:
            conn.close()
        try:
            out = json.loads(data or b"{}")
        except ValueError as exc:
            raise EtcdError(f"etcd {path}: undecodable answer") from exc
        if resp.status != 200 or "error" in out:
            msg = str(out.get("message") or out.get("error") or resp.status)
            if "lease not found" in msg:
                raise LeaseNotFound(msg)
            if resp.status >= 500 and "lease" not in msg:
                raise EtcdUnavailable(f"etcd {path}: {msg}")
            raise EtcdError(f"etcd {path}: {msg}")
        return out  # type: ignore[no-any-return]

    def get(self, key: str, *, prefix: bool = False) -> tuple[list[KeyValue], int]:
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64_end(key)
        out = self._call("kv/range", body)
        return [_kv(kv) for kv in out.get("kvs", [])], int(out["header"]["revision"])

    def put(self, key: str, value: str, *, lease: int = 0) -> int:
        out = self._call("kv/put", _op_json(Put(key, value, lease))["request_put"])
        return int(out["header"]["revision"])

    def delete(self, key: str) -> int:
        return int(self._call("kv/deleterange", {"key": _b64(key)})["header"]["revision"])

    def txn(self, compares: list[Compare], success: list[Op], failure: list[Op] | None = None) -> bool:
        out = self._call("kv/txn", {"compare": [_compare_json(c) for c in compares],
                                    "success": [_op_json(o) for o in success],
                                    "failure": [_op_json(o) for o in failure or []]})
        return bool(out.get("succeeded", False))

    def grant(self, ttl: int) -> int:
        return int(self._call("lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease_id: int) -> int:
        out = self._call("lease/keepalive", {"ID": str(lease_id)})
        ttl = int(out.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFound(f"lease {lease_id:x} not found")
        return ttl

    def revoke(self, lease_id: int) -> None:
        self._call("lease/revoke", {"ID": str(lease_id)})

    def watch(self, key: str, *, prefix: bool = False, start_revision: int = 0) -> Watch:
        req: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            req["range_end"] = _b64_end(key)
        if start_revision:
            req["start_revision"] = str(start_revision)
        return _HttpWatch(self.host, self.port, self.timeout, {"create_request": req})


class _HttpWatch:
    """One streaming watch; iterate for batches of events; `close()` (from any thread) ends the iteration."""

    def __init__(self, host: str, port: int, timeout: float, body: dict[str, Any]) -> None:
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
            payload = json.dumps(body).encode()
            self._sock.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(payload), payload))
            self._sock.settimeout(None)
            self._resp = http.client.HTTPResponse(self._sock)
            self._resp.begin()
        except (OSError, http.client.HTTPException) as exc:
            raise EtcdUnavailable(f"etcd watch {host}:{port}: {exc}") from exc
        if self._resp.status != 200:
            raise EtcdError(f"etcd watch: HTTP {self._resp.status}")
        self._closed = False

    def __iter__(self) -> Iterator[list[Event]]:
        try:
            while not self._closed:
                line = self._resp.readline()
                if not line:
                    raise EtcdUnavailable("etcd watch stream ended")
                if not line.strip():
                    continue
                msg = json.loads(line).get("result", {})
                if msg.get("canceled") or msg.get("compact_revision"):
                    raise EtcdUnavailable(f"etcd watch canceled: {msg.get('cancel_reason', 'compacted')}")
                events = [Event("DELETE" if e.get("type") == "DELETE" else "PUT", _kv(e["kv"]))
                          for e in msg.get("events", [])]
                if events:
                    yield events
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if self._closed:
                return
            raise EtcdUnavailable(f"etcd watch: {exc}") from exc

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


@dataclass
class _Lease:
    ttl: int
    expires: float
    keys: set[str] = field(default_factory=set)


class FakeEtcd:
    """In-memory etcd: a global revision, create/mod revisions, compare-and-set, leases that expire on an
    injectable clock, and watches. Set `down = True` to make every call fail as if etcd were stopped."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.revision = 1
        self.down = False
        self._kvs: dict[str, KeyValue] = {}
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 0x1000
        self._history: list[tuple[int, Event]] = []
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Every operation runs under this; FileEtcd also loads and saves its file here."""
        with self._cond:
            yield

    def _sync(self) -> None:
        """Bring the in-memory state up to date (FileEtcd re-reads its file); called by watches."""

    def _check(self) -> None:
        if self.down:
            raise EtcdUnavailable("fake etcd is down")
        self._expire()

    def _expire(self) -> None:
        now = self.clock()
        for lid in [lid for lid, lease in self._leases.items() if lease.expires <= now]:
            self._drop_lease(lid)

    def _drop_lease(self, lid: int) -> None:
        lease = self._leases.pop(lid)
        for key in sorted(lease.keys):
            if key in self._kvs and self._kvs[key].lease == lid:
                self._delete(key)

    def _emit(self, ev: Event) -> None:
        self._history.append((self.revision, ev))
        self._cond.notify_all()

    def _put(self, key: str, value: str, lease: int) -> None:
        if lease and lease not in self._leases:
            raise LeaseNotFound(f"lease {lease:x} not found")
        self.revision += 1
        old = self._kvs.get(key)
        if old is not None and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        kv = KeyValue(key, value, old.create_revision if old else self.revision, self.revision, lease)
        self._kvs[key] = kv
        if lease:
            self._leases[lease].keys.add(key)
        self._emit(Event("PUT", kv))

    def _delete(self, key: str) -> None:
        old = self._kvs.pop(key, None)
        if old is None:
            return
        self.revision += 1
        self._emit(Event("DELETE", KeyValue(key, "", 0, self.revision, 0)))

    def get(self, key: str, *, prefix: bool = False) -> tuple[list[KeyValue], int]:
        with self._locked():
            self._check()
            if prefix:
                found = [kv for k, kv in sorted(self._kvs.items()) if k.startswith(key)]
            else:
                found = [self._kvs[key]] if key in self._kvs else []
            return found, self.revision

    def put(self, key: str, value: str, *, lease: int = 0) -> int:
        with self._locked():
            self._check()
            self._put(key, value, lease)
            return self.revision

    def delete(self, key: str) -> int:
        with self._locked():
            self._check()
            self._delete(key)
            return self.revision

    def txn(self, compares: list[Compare], success: list[Op], failure: list[Op] | None = None) -> bool:
        with self._locked():
            self._check()
            ok = all(self._holds(c) for c in compares)
            for op in success if ok else failure or []:
                if isinstance(op, Put):
                    self._put(op.key, op.value, op.lease)
                else:
                    self._delete(op.key)
            return ok

    def _holds(self, c: Compare) -> bool:
        kv = self._kvs.get(c.key)
        if c.target == "CREATE":
            return (kv.create_revision if kv else 0) == c.value
        if c.target == "MOD":
            return (kv.mod_revision if kv else 0) == c.value
        return kv is not None and kv.value == c.value

    def grant(self, ttl: int) -> int:
        with self._locked():
            self._check()
            self._next_lease += 1
            self._leases[self._next_lease] = _Lease(ttl, self.clock() + ttl)
            return self._next_lease

    def keepalive(self, lease_id: int) -> int:
        with self._locked():
            self._check()
            lease = self._leases.get(lease_id)
            if lease is None:
                raise LeaseNotFound(f"lease {lease_id:x} not found")
            lease.expires = self.clock() + lease.ttl
            return lease.ttl

    def revoke(self, lease_id: int) -> None:
        with self._locked():
            self._check()
            if lease_id not in self._leases:
                raise LeaseNotFound(f"lease {lease_id:x} not found")
            self._drop_lease(lease_id)

    def tick(self) -> None:
        """Expire leases whose time has come (the real server does this on its own)."""
        with self._locked():
            self._expire()

    def watch(self, key: str, *, prefix: bool = False, start_revision: int = 0) -> Watch:
        with self._locked():
            self._check()
            start = start_revision or self.revision + 1
        return _FakeWatch(self, key, prefix, start)


class _FakeWatch:
    def __init__(self, etcd: FakeEtcd, key: str, prefix: bool, start: int) -> None:
        self._etcd, self._key, self._prefix, self._next = etcd, key, prefix, start
        self._closed = False

    def _match(self, k: str) -> bool:
        return k.startswith(self._key) if self._prefix else k == self._key

    def __iter__(self) -> Iterator[list[Event]]:
        cond = self._etcd._cond
        while True:
            with cond:
                while True:
                    self._etcd._sync()
                    if self._closed:
                        return
                    if self._etcd.down:
                        raise EtcdUnavailable("fake etcd is down")
                    batch = [ev for rev, ev in self._etcd._history if rev >= self._next and self._match(ev.kv.key)]
                    if self._etcd._history and self._etcd._history[-1][0] >= self._next:
                        self._next = self._etcd._history[-1][0] + 1
                    if batch:
                        break
                    cond.wait(0.2)
            yield batch

    def close(self) -> None:
        with self._etcd._cond:
            self._closed = True
            self._etcd._cond.notify_all()


class FileEtcd(FakeEtcd):
    """The fake's semantics kept in a JSON file (flock'd), for the static one-machine mode: several agents on
    one machine share it, and leases survive an agent restart. Times are wall-clock seconds."""

    HISTORY = 2000

    def __init__(self, path: str) -> None:
        super().__init__(time.time)
        self.path = path
        self._mtime = -1.0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._cond:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._load(fd)
                before = self.revision, len(self._leases), [(k, v.expires) for k, v in self._leases.items()]
                yield
                after = self.revision, len(self._leases), [(k, v.expires) for k, v in self._leases.items()]
                if after != before:
                    self._save(fd)
            finally:
                os.close(fd)

    def _sync(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return
        if mtime != self._mtime:
            with self._locked():
                self._expire()
                self._mtime = mtime

    def _load(self, fd: int) -> None:
        data = b""
        while chunk := os.pread(fd, 1 << 20, len(data)):
            data += chunk
        if not data:
            return
        state = json.loads(data)
        self.revision = state["revision"]
        self._next_lease = state["next_lease"]
        self._kvs = {k: KeyValue(k, v["value"], v["create"], v["mod"], v["lease"]) for k, v in state["kvs"].items()}
        self._leases = {int(i): _Lease(v["ttl"], v["expires"], set(v["keys"])) for i, v in state["leases"].items()}
        self._history = [(rev, Event(kind, KeyValue(k, val, c, m, lease)))
                         for rev, kind, k, val, c, m, lease in state["history"]]

    def _save(self, fd: int) -> None:
        state = {
            "revision": self.revision, "next_lease": self._next_lease,
            "kvs": {k: {"value": kv.value, "create": kv.create_revision, "mod": kv.mod_revision, "lease": kv.lease}
                    for k, kv in self._kvs.items()},
            "leases": {str(i): {"ttl": lease.ttl, "expires": lease.expires, "keys": sorted(lease.keys)}
                       for i, lease in self._leases.items()},
            "history": [(rev, ev.type, ev.kv.key, ev.kv.value, ev.kv.create_revision, ev.kv.mod_revision,
                         ev.kv.lease) for rev, ev in self._history[-self.HISTORY:]],
        }
        data = json.dumps(state).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
