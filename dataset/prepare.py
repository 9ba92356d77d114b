"""Prepare datasets: a thin wrapper around the package's command line.

Usage::

    python dataset/prepare.py amazon2023 --reviews Sports_and_Outdoors.jsonl.gz \
        --meta meta_Sports_and_Outdoors.jsonl.gz --out dataset/sports_outdoors
    python dataset/prepare.py download-images dataset/sports_outdoors
    python dataset/prepare.py authors-archive --archive path/to/archive \
        --out dataset/sports_outdoors
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recbole_perpeft.data.preparation.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
