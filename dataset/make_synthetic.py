"""Write the SYNTHETIC multimodal dataset (see ``dataset/SYNTHETIC.md``).

Example::

    python dataset/make_synthetic.py --out dataset/synthetic --items 1000 --users 800
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_perpeft.data.synthetic import make_synthetic_dataset  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str] | None): Arguments; ``None`` for ``sys.argv[1:]``.

    Returns:
        argparse.Namespace: The parsed options.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default="synthetic", help="dataset name (file stem)")
    p.add_argument("--items", type=int, default=1000, help="number of items")
    p.add_argument("--users", type=int, default=800, help="number of users")
    p.add_argument("--groups", type=int, default=4, help="latent interest groups")
    p.add_argument(
        "--seq-len",
        type=int,
        nargs=2,
        default=(8, 16),
        metavar=("MIN", "MAX"),
        help="inclusive range of sequence lengths",
    )
    p.add_argument("--image-size", type=int, default=64, help="PNG side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--p-noise", type=float, default=0.2, help="popularity draws")
    p.add_argument("--drift", type=float, default=0.4, help="drift to second value")
    p.add_argument("--workers", type=int, default=1, help="rendering processes")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate the dataset and print its statistics as JSON.

    Args:
        argv (list[str] | None): Arguments; ``None`` for ``sys.argv[1:]``.

    Returns:
        int: The exit status.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    stats = make_synthetic_dataset(
        args.out,
        name=args.name,
        n_items=args.items,
        n_users=args.users,
        n_groups=args.groups,
        seq_len=tuple(args.seq_len),
        image_size=args.image_size,
        seed=args.seed,
        show_progress=args.progress,
        p_noise=args.p_noise,
        drift=args.drift,
        num_workers=args.workers,
    )
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
