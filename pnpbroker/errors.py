"""The one base class of pnpbroker's errors; each subclass also inherits the matching built-in."""


class BrokerError(Exception):
    """Base of every pnpbroker error."""
