"""``python -m pnpbroker``."""

import sys

from pnpbroker.cli import main

sys.exit(main())
