"""Test support shared by every tier: namespaces, processes and clean-up checks."""
