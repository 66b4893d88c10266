"""Pieces the bridge and veth plugins share: config fields, kernel-error translation, the container side,
CHECK comparisons, and the rule sets they own (masquerade, MAC spoof check)."""
