"""Benchmarks that put pnpbroker beside its peers and its limits (see bench/README.md).

They share the test kit (tests/support: the system-like bus, network namespaces, the broker
process) with the tests; importing ``bench`` makes it importable as ``support``.
"""

import sys
from pathlib import Path

_KIT = str(Path(__file__).resolve().parent.parent / "tests")
if _KIT not in sys.path:
    sys.path.insert(0, _KIT)
