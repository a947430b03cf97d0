"""The one error hierarchy: each subclass also inherits the built-in it resembles."""


class BrokerError(Exception):
    """Base of every pnpbroker error."""
