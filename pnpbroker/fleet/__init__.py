"""The fleet: each host's ordered device stream forwarded to MQTT 5 (docs/fleet.md).

``pnpbroker run`` serves handled events from the journal's ``forwarded`` cursor on a local
socket (:mod:`pnpbroker.core.feed`); ``pnpbroker forward``, its own unprivileged service,
publishes them to an MQTT broker and tells the cursor what the MQTT broker acknowledged.
"""
