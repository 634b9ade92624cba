"""The Trove guest agent's Python environment, built on the host for the guest's Python."""
