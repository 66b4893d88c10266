#!/usr/bin/env bash
# The end-to-end suite across the Vagrant VMs: attach pods on every node with cnipy's CNI plugins, probe every
# pod from every node with real TCP (same node and across VMs), then remove the pods. Exit 1 on any failure.
# Usage: ./run-e2e.sh [--no-up] [--lab]   (--lab also runs the namespace lab tests inside node1)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
nodes=${CNIPY_NODES:-3}
underlay="${CNIPY_UNDERLAY:-192.168.56}.0/24"
pods=${CNIPY_PODS:-2}
up=1 lab=0
for arg in "$@"; do
    case $arg in
        --no-up) up=0 ;;
        --lab) lab=1 ;;
        *) echo "usage: $0 [--no-up] [--lab]" >&2; exit 2 ;;
    esac
done

vmnode() {  # vmnode NODE COMMAND [ARGS...]: run cnipy.lab.vmnode as root on VM NODE
    local i=$1
    shift
    vagrant ssh "node$i" -c "sudo /cnipy/.venv/bin/python -m cnipy.lab.vmnode $* --index $i --nodes $nodes --underlay $underlay --count $pods"
}

if ((up)); then
    vagrant up --provision
fi
work=$(mktemp -d)

cleanup() {
    for i in $(seq 1 "$nodes"); do
        vmnode "$i" clean || true
    done
}
trap 'cleanup; rm -rf "$work"' EXIT

echo "== attaching $pods pods on each of $nodes nodes"
for i in $(seq 1 "$nodes"); do
    vmnode "$i" pods | tail -n 1 > "$work/pods-$i.json"
done
python3 -c 'import json, sys; print(json.dumps([p for f in sys.argv[1:] for p in json.load(open(f))]))' \
    "$work"/pods-*.json > "$work/all.json"

echo "== probing every pod from every node"
failed=0
for i in $(seq 1 "$nodes"); do
    vagrant upload "$work/all.json" /tmp/cnipy-targets.json "node$i" >/dev/null
    vmnode "$i" probe --targets /tmp/cnipy-targets.json || failed=1
done

if ((lab)); then
    echo "== the namespace lab suite inside node1"
    vagrant ssh node1 -c "cd /cnipy && sudo .venv/bin/python -m pytest tests/netns/lab -q" || failed=1
fi
if ((failed)); then
    echo "run-e2e: FAILED" >&2
    exit 1
fi
echo "run-e2e: all probes passed"
