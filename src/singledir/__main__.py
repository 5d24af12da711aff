"""``python -m singledir`` runs the command-line interface."""

import sys

from singledir.cli import main

sys.exit(main())
