"""The one error hierarchy: each subclass also inherits the built-in it resembles."""


class BrokerError(Exception):
    """Base of every pnpbroker error."""


class MalformedUevent(ValueError, BrokerError):
    """A datagram or record that is not a well-formed kernel uevent."""

    def __init__(self, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data


class ForgedSender(PermissionError, BrokerError):
    """A datagram that did not come from the kernel."""

    def __init__(self, reason: str, port: int, uid: int | None) -> None:
        super().__init__(reason)
        self.port = port
        self.uid = uid


class ConfigError(ValueError, BrokerError):
    """A configuration file or option that cannot be used; names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class SourceError(OSError, BrokerError):
    """An event source that cannot be opened or used."""


class RebroadcastError(OSError, BrokerError):
    """A re-broadcast socket that cannot be opened (``rebroadcast``)."""


class NoLongerJournalled(LookupError, BrokerError):
    """A read asked for entries the journal no longer holds (retention or its cap removed them)."""

    def __init__(self, wanted: int, oldest: int) -> None:
        super().__init__(f"sequence {wanted} is no longer journalled (oldest held: {oldest})")
        self.wanted = wanted
        self.oldest = oldest
