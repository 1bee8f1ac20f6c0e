"""``python -m defender_agent`` runs the command line."""

import sys

from defender_agent.cli import main

sys.exit(main())
