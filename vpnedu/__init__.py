"""vpnedu: a real WireGuard-compatible VPN in Python, built to be read and watched."""

__version__ = "0.1.0"
