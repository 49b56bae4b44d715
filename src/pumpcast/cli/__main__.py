"""`python -m pumpcast.cli COMMAND ...`, the same as `pumpcast COMMAND ...`."""

import sys

from pumpcast.cli import main

sys.exit(main())
