"""The public sample's spelling: ``python -m defender_agent.agent ...`` runs ``run``."""

import sys

from defender_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
