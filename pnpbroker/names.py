"""Every bus name, object path, interface, error name and polkit action id, in one place."""

from typing import Final

BUS_NAME: Final = "org.pnp.Broker"
OBJECT_PATH: Final = "/org/pnp/Broker"
INTERFACE: Final = "org.pnp.Broker1"

ERROR_PREFIX: Final = "org.pnp.Broker1.Error"
ERROR_NOT_AUTHORIZED: Final = f"{ERROR_PREFIX}.NotAuthorized"
#: Bad arguments: the standard name (D-Bus specification), as GDBus and sd-bus use it.
ERROR_INVALID_ARGS: Final = "org.freedesktop.DBus.Error.InvalidArgs"
ERROR_FAILED: Final = f"{ERROR_PREFIX}.Failed"
ERROR_JOURNAL_GAP: Final = f"{ERROR_PREFIX}.NoLongerJournalled"

ACTION_TRIGGER: Final = "org.pnp.Broker.trigger"
ACTION_CONTROL: Final = "org.pnp.Broker.control"
