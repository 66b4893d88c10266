#!/usr/bin/env bash
# Make this VM lab node INDEX of COUNT on the underlay UNDERLAY (for example 2 3 192.168.56.0/24): the kernel
# settings every lab node namespace gets (cnipy/lab/node-sysctls.conf, shared with `cnipy lab up`), then the
# lab's node set-up: the CNI conflist (/etc/cni/net.d) and static routes to the other nodes' pod CIDRs.
set -euo pipefail
repo=${CNIPY_REPO:-/cnipy}
if [[ $# -ne 3 ]]; then
    echo "usage: $0 INDEX COUNT UNDERLAY_CIDR" >&2
    exit 2
fi
index=$1 count=$2 underlay=$3

install -m 0644 "$repo/cnipy/lab/node-sysctls.conf" /etc/sysctl.d/90-cnipy-node.conf
sysctl -q -p /etc/sysctl.d/90-cnipy-node.conf

"$repo/.venv/bin/python" -m cnipy.lab.vmnode setup --index "$index" --nodes "$count" --underlay "$underlay"
echo "node $index of $count ready: pod CIDR 10.244.$index.0/24"
