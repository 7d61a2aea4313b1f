"""hostflow probe: capture or read packets, meter them into flows, learn names, ship them."""

__version__ = "0.1.0"
