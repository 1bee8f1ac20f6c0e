"""The public sample's spelling: ``python -m defender_agent.collector -n 1 -s 1``.

Runs ``defender-agent collect`` with the same arguments.
"""

import sys

from defender_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["collect", *sys.argv[1:]]))
