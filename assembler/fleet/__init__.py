"""Builds shared across machines: the layer cache through an OCI registry (artifact, transfer,
remote)."""
