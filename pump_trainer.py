#!/usr/bin/env python3
"""The seed-compatible entry point: `python pump_trainer.py --epochs 30 ...` (see README)."""

import sys

from pumpcast.cli import pump_trainer_main

if __name__ == "__main__":
    sys.exit(pump_trainer_main())
