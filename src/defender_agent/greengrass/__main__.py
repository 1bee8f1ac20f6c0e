"""``python -m defender_agent.greengrass``: the same as ``defender-agent greengrass``."""

from __future__ import annotations

import sys

from defender_agent.cli import main

if __name__ == "__main__":
    sys.exit(main(["greengrass", *sys.argv[1:]]))
