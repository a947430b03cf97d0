"""``python -m pnpbroker``."""

import sys

from pnpbroker.commands import main

sys.exit(main())
