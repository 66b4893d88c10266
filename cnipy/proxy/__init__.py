"""The service proxy (a kube-proxy replacement): Services -> nftables or iptables rules.

    sources      manifests.py (YAML/JSON files, watched), kubeapi.py (list + watch), objects.py (API objects ->
                 model), labels.py (label keys/values and selectors)
    model.py     Service, ServicePort, EndpointSlice, Endpoint, Pod, ClusterState: frozen, ipaddress-typed
    plan.py      per service port and IP family: which endpoints serve internal and external traffic here
    nftables/    table ``ip cnipy`` / ``ip6 cnipy``: verdict-map dispatch, numgen slot maps; Transaction, Nft, FakeNft
    iptables/    kube-proxy's chains and hashed names; iptables-restore --noflush; Iptables, FakeIptables
    daemon.py    the sync loop (coalescing, full resync, self-repair, retry, UDP conntrack cleanup)
    dualstack.py MetaProxier: one proxier per IP family behind one daemon
    health.py    /healthz, /metrics and healthCheckNodePort servers; metrics.py the Prometheus text
    command.py   ``cnipy proxy`` (also ``python -m cnipy.proxy``)
"""

from cnipy.proxy.errors import ApplyError, ManifestError, ProxyError, SelectorError, SourceError
from cnipy.proxy.model import ClusterState, Endpoint, EndpointSlice, Service, ServiceKey, ServicePort
from cnipy.proxy.plan import NodeConfig, PortPlan, build_plan, build_plans
from cnipy.proxy.sync import Proxier, SyncResult

__all__ = [
    "ApplyError", "ClusterState", "Endpoint", "EndpointSlice", "ManifestError", "NodeConfig", "PortPlan",
    "Proxier", "ProxyError", "SelectorError", "Service", "ServiceKey", "ServicePort", "SourceError", "SyncResult",
    "build_plan", "build_plans",
]
