"""Overlay networking: the node agent (subnet leases in etcd or a static file), its back ends (vxlan, host-gw)
and the subnet file it writes for the cnipy-overlay CNI plugin. Importing this package loads nothing else."""
