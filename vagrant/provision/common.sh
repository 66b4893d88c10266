#!/usr/bin/env bash
# Provision a Debian 12 VM for cnipy: the same set-up as a developer machine (bin/setup: Debian packages and
# the virtualenv), plus the kernel modules a namespace lab node gets from the host kernel.
set -euo pipefail
repo=${CNIPY_REPO:-/cnipy}

if [[ ! -x "$repo/bin/setup" ]]; then
    echo "provision/common.sh: no checkout at $repo (the Vagrantfile rsyncs it there)" >&2
    exit 1
fi
"$repo/bin/setup"

# br_netfilter makes bridged pod traffic visible to iptables (net.bridge.* in cnipy/lab/node-sysctls.conf).
modules=(br_netfilter vxlan)
printf '%s\n' "${modules[@]}" > /etc/modules-load.d/cnipy.conf
for m in "${modules[@]}"; do
    modprobe "$m"
done
