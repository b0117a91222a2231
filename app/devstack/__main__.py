"""``python -m app.devstack up|down|status``."""

import sys

from app.devstack.cli import main

sys.exit(main())
