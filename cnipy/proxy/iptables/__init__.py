"""iptables back end in kube-proxy's layout (names.py: hashed chain names; render.py: rules; runner.py: Iptables,
FakeIptables; backend.py: the proxier)."""
