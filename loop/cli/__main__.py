"""`python -m alignloop.cli ...` is the `alignloop` command."""

import sys

from alignloop.cli import main

sys.exit(main())
