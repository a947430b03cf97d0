"""pnpbroker: kernel uevents, handled one at a time, published on D-Bus."""

__version__ = "0.1.0"
