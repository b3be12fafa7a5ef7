"""Checks after apply and the evidence they leave (docs/design.md, "Verified promotion")."""
