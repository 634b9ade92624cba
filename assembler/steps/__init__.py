"""Build steps: each a plain function (g, cfg) -> None over one open guestfs handle."""
