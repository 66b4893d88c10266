"""Subnet leases in etcd (or in the file-backed store of the static mode, which has the same semantics).

Layout under a prefix (default /cnipy.io/network):

    <prefix>/config                       the network configuration (config.py JSON)
    <prefix>/subnets/10.244.3.0-24        one lease: {"node", "publicIP", "backendType", "vtepMAC"},
                                          attached to an etcd lease with the lease TTL

A subnet is taken with a transaction "create only if the key does not exist", so two agents never hold one
subnet; a node that restarts takes back the key that carries its node name (compare on mod revision). The TTL is
renewed by keep-alive; when a node dies its key expires and every peer sees a DELETE.

    LeaseError               any lease failure
    ├── StoreUnavailable     etcd does not answer: retry
    ├── ConfigMissing        no network configuration stored yet
    ├── NoSubnetAvailable    every subnet in SubnetMin..SubnetMax is taken
    └── LeaseLost            our lease expired or was taken over: acquire again
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cnipy.overlay import config as C
from cnipy.overlay.etcd import Compare, Delete, Etcd, EtcdError, EtcdUnavailable, LeaseNotFound, Put, Watch

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PREFIX = "/cnipy.io/network"
DEFAULT_TTL = 24 * 3600


class LeaseError(Exception):
    pass


class StoreUnavailable(LeaseError):
    pass


class ConfigMissing(LeaseError):
    pass


class NoSubnetAvailable(LeaseError):
    pass


class LeaseLost(LeaseError):
    pass


@dataclass(frozen=True)
class Lease:
    subnet: ipaddress.IPv4Network
    node: str
    public_ip: IPAddress
    backend_type: str
    vtep_mac: str = ""

    def to_json(self) -> str:
        return json.dumps({"node": self.node, "publicIP": str(self.public_ip), "backendType": self.backend_type,
                           "vtepMAC": self.vtep_mac}, sort_keys=True)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The subnet's .0: the address of the node's VTEP (flannel's convention)."""
        return self.subnet.network_address


def subnet_key(prefix: str, subnet: ipaddress.IPv4Network) -> str:
    return f"{prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}"


def parse_lease(prefix: str, key: str, value: str) -> Lease | None:
    """A lease from its key and value; None for anything malformed (a bad peer must not stop the agent)."""
    subnet = _subnet_of(prefix, key)
    try:
        raw: Any = json.loads(value)
        if subnet is None or not isinstance(raw, dict):
            return None
        return Lease(subnet, str(raw["node"]), ipaddress.ip_address(raw["publicIP"]),
                     str(raw.get("backendType", "")), str(raw.get("vtepMAC", "")))
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Change:
    """One lease change seen by a watch: `lease` is None when `subnet` was released or expired."""

    subnet: ipaddress.IPv4Network
    lease: Lease | None


class LeaseStore:
    """Leases of one node in one etcd (or FileEtcd)."""

    def __init__(self, etcd: Etcd, prefix: str = DEFAULT_PREFIX, ttl: int = DEFAULT_TTL) -> None:
        self.etcd, self.prefix, self.ttl = etcd, prefix.rstrip("/"), ttl
        self.lease_id = 0
        self.lease: Lease | None = None

    def _guard(self, exc: EtcdError) -> LeaseError:
        if isinstance(exc, EtcdUnavailable):
            return StoreUnavailable(str(exc))
        if isinstance(exc, LeaseNotFound):
            return LeaseLost(str(exc))
        return LeaseError(str(exc))

    def network_config(self) -> C.NetworkConfig:
        try:
            kvs, _ = self.etcd.get(f"{self.prefix}/config")
        except EtcdError as exc:
            raise self._guard(exc) from exc
        if not kvs:
            raise ConfigMissing(f"no network configuration at {self.prefix}/config")
        return C.loads(kvs[0].value)

    def put_network_config(self, conf: C.NetworkConfig) -> None:
        try:
            self.etcd.put(f"{self.prefix}/config", json.dumps(conf.to_json()))
        except EtcdError as exc:
            raise self._guard(exc) from exc

    def snapshot(self) -> tuple[list[Lease], int]:
        """Every valid lease and the store revision they were read at."""
        try:
            kvs, rev = self.etcd.get(f"{self.prefix}/subnets/", prefix=True)
        except EtcdError as exc:
            raise self._guard(exc) from exc
        leases = [lease for kv in kvs if (lease := parse_lease(self.prefix, kv.key, kv.value)) is not None]
        return leases, rev

    def acquire(self, conf: C.NetworkConfig, want: Lease, previous: ipaddress.IPv4Network | None = None,
                attempts: int = 20) -> Lease:
        """Take a subnet for `want.node` (want.subnet is ignored): its existing key first, then `previous`,
        then a random free one. Safe against concurrent agents: every write is a compare-and-set, and a lost
        race means looking again."""
        try:
            self.lease_id = self.etcd.grant(self.ttl)
            for _ in range(attempts):
                kvs, _rev = self.etcd.get(f"{self.prefix}/subnets/", prefix=True)
                found = [(kv, lease) for kv in kvs if (lease := parse_lease(self.prefix, kv.key, kv.value))]
                ours = [(kv, lease) for kv, lease in found if lease.node == want.node and conf.contains(lease.subnet)]
                if ours:
                    kv, lease = ours[0]
                    got = self._put(want, lease.subnet, Compare(kv.key, "MOD", kv.mod_revision))
                else:
                    taken = {lease.subnet for _, lease in found} | {_subnet_of(self.prefix, kv.key) for kv in kvs}
                    choice = previous if previous is not None and conf.contains(previous) \
                        and previous not in taken else None
                    if choice is None:
                        free = [s for s in conf.subnets() if s not in taken]
                        if not free:
                            raise NoSubnetAvailable(f"all subnets of {conf.network} /{conf.subnet_len} are leased")
                        choice = random.choice(free)
                    got = self._put(want, choice, Compare(subnet_key(self.prefix, choice), "CREATE", 0))
                if got is not None:
                    self.lease = got
                    return got
                previous = None
        except EtcdError as exc:
            raise self._guard(exc) from exc
        raise LeaseError(f"could not acquire a subnet after {attempts} attempts (heavy contention)")

    def _put(self, want: Lease, subnet: ipaddress.IPv4Network, guard: Compare) -> Lease | None:
        mine = _with_subnet(want, subnet)
        key = subnet_key(self.prefix, subnet)
        return mine if self.etcd.txn([guard], [Put(key, mine.to_json(), self.lease_id)]) else None

    def renew(self) -> int:
        """Keep our lease alive; returns the TTL. LeaseLost when it expired meanwhile."""
        if self.lease is None:
            raise LeaseLost("no lease held")
        try:
            return self.etcd.keepalive(self.lease_id)
        except EtcdError as exc:
            raise self._guard(exc) from exc

    def release(self) -> None:
        """Give our subnet back (node removal): delete the key only while it is still ours, revoke the lease."""
        if self.lease is None:
            return
        key = subnet_key(self.prefix, self.lease.subnet)
        try:
            self.etcd.txn([Compare(key, "VALUE", self.lease.to_json())], [Delete(key)])
            with contextlib.suppress(LeaseNotFound):
                self.etcd.revoke(self.lease_id)
        except EtcdError as exc:
            raise self._guard(exc) from exc
        self.lease = None

    def release_node(self, node: str) -> list[ipaddress.IPv4Network]:
        """Delete every lease that names `node` (node removal while its agent is not running); returns them."""
        gone = []
        try:
            kvs, _ = self.etcd.get(f"{self.prefix}/subnets/", prefix=True)
            for kv in kvs:
                lease = parse_lease(self.prefix, kv.key, kv.value)
                if lease is not None and lease.node == node and \
                        self.etcd.txn([Compare(kv.key, "MOD", kv.mod_revision)], [Delete(kv.key)]):
                    gone.append(lease.subnet)
        except EtcdError as exc:
            raise self._guard(exc) from exc
        return gone

    def watch(self, revision: int) -> tuple[Watch, Iterator[list[Change]]]:
        """Changes after `revision`; close the returned Watch to stop the iterator."""
        try:
            w = self.etcd.watch(f"{self.prefix}/subnets/", prefix=True, start_revision=revision + 1)
        except EtcdError as exc:
            raise self._guard(exc) from exc
        return w, self._changes(w)

    def _changes(self, w: Watch) -> Iterator[list[Change]]:
        try:
            for events in w:
                out = []
                for ev in events:
                    subnet = _subnet_of(self.prefix, ev.kv.key)
                    if subnet is None:
                        continue
                    lease = parse_lease(self.prefix, ev.kv.key, ev.kv.value) if ev.type == "PUT" else None
                    out.append(Change(subnet, lease))
                if out:
                    yield out
        except EtcdError as exc:
            raise self._guard(exc) from exc


def _subnet_of(prefix: str, key: str) -> ipaddress.IPv4Network | None:
    net, _, plen = key[len(f"{prefix}/subnets/"):].partition("-")
    try:
        return ipaddress.IPv4Network((net, int(plen)))
    except ValueError:
        return None


def _with_subnet(lease: Lease, subnet: ipaddress.IPv4Network) -> Lease:
    return Lease(subnet, lease.node, lease.public_ip, lease.backend_type, lease.vtep_mac)
