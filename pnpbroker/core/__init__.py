"""The bus-free core: reader -> journal -> sequencer -> sinks (the publish queue first).

Nothing here imports dbus-fast or :mod:`pnpbroker.bus` (a test holds that): the pipeline runs,
and is tested, with no bus at all; the D-Bus server wraps it from outside.
"""
