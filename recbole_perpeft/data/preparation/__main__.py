"""Entry point: ``python -m recbole_perpeft.data.preparation ...``."""

import sys

from recbole_perpeft.data.preparation.cli import main

if __name__ == "__main__":
    sys.exit(main())
