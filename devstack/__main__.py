"""``python -m devstack up|down|status``."""

import sys

from devstack.cli import main

sys.exit(main())
