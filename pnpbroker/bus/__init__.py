"""The D-Bus server around the bus-free core: wire format, transport, service object, keeper."""
