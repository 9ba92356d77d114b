"""Command line of the data preparation steps.

Subcommands: ``amazon2023``, ``authors-archive`` and ``download-images``. Bad
input exits with status 2 and a message on stderr; the final statistics or
summary line goes to stdout. Ctrl-C during ``download-images`` exits with
status 130 after one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from recbole_perpeft.data.preparation.amazon2023 import (
    TEXT_FIELDS,
    prepare_amazon2023,
)
from recbole_perpeft.data.preparation.atomic import TABLE1_HEADER
from recbole_perpeft.data.preparation.authors_archive import (
    IMAGE_MODES,
    ITEM_KEYS,
    convert_authors_archive,
)
from recbole_perpeft.data.preparation.image_download import (
    DownloadInterrupted,
    download_images,
)

logger = logging.getLogger(__name__)


def _int_at_least(option: str, low: int) -> Callable[[str], int]:
    """Build an argparse type for an integer option with a lower bound.

    Args:
        option (str): The option name, for the message.
        low (int): The least allowed value.

    Returns:
        Callable[[str], int]: The converter.
    """

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(
                f"{option} must be an integer >= {low}, got {text!r}"
            )
        return value

    return convert


def _float_above(option: str, low: float, inclusive: bool) -> Callable[[str], float]:
    """Build an argparse type for a number option with a lower bound.

    Args:
        option (str): The option name, for the message.
        low (float): The bound.
        inclusive (bool): Whether ``low`` itself is allowed.

    Returns:
        Callable[[str], float]: The converter.
    """

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        ok = value is not None and (value >= low if inclusive else value > low)
        if not ok or value != value:
            sign = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(
                f"{option} must be a number {sign} {low:g}, got {text!r}"
            )
        return value

    return convert


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser.

    Returns:
        argparse.ArgumentParser: The parser with its three subcommands.
    """
    parser = argparse.ArgumentParser(
        prog="python -m recbole_perpeft.data.preparation",
        description="Prepare RecBole atomic files (with item images).",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    amazon = sub.add_parser(
        "amazon2023", help="Amazon Reviews 2023 reviews + meta -> atomic files"
    )
    amazon.add_argument("--reviews", required=True, help="<Category>.jsonl[.gz]")
    amazon.add_argument("--meta", required=True, help="meta_<Category>.jsonl[.gz]")
    amazon.add_argument("--out", required=True, help="output folder dataset/<name>")
    amazon.add_argument("--name", help="dataset name (default: folder name of --out)")
    amazon.add_argument(
        "--min-user",
        type=_int_at_least("--min-user", 1),
        default=5,
        help="k-core: least interactions per user (default 5)",
    )
    amazon.add_argument(
        "--min-item",
        type=_int_at_least("--min-item", 1),
        default=5,
        help="k-core: least interactions per item (default 5)",
    )
    amazon.add_argument(
        "--text-fields",
        nargs="+",
        choices=TEXT_FIELDS,
        default=["title"],
        metavar="FIELD",
        help=f"text columns of the .item file, from {', '.join(TEXT_FIELDS)} "
        "(default: title)",
    )
    amazon.add_argument(
        "--require-image",
        action="store_true",
        help="drop items without a main image URL before the k-core filter",
    )
    amazon.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out, replacing only the files this step "
        "writes (other files are kept)",
    )

    archive = sub.add_parser(
        "authors-archive", help="the authors' published archive -> atomic files"
    )
    archive.add_argument("--archive", required=True, help="folder of the archive")
    archive.add_argument("--out", required=True, help="output folder dataset/<name>")
    archive.add_argument(
        "--name", help="file prefix in the archive (default: from *_final.txt)"
    )
    archive.add_argument(
        "--images",
        choices=IMAGE_MODES,
        default="copy",
        help="copy or symlink the images into <out>/images (default copy)",
    )
    archive.add_argument(
        "--item-key",
        choices=ITEM_KEYS,
        default="raw",
        help="item ids: raw keys of the item2id pickle, or the txt ids "
        "(default raw)",
    )
    archive.add_argument(
        "--trust-pickles",
        action="store_true",
        help="load the pickles with the standard unpickler (runs code!)",
    )
    archive.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out, replacing only the files this step "
        "writes (other files are kept)",
    )

    images = sub.add_parser(
        "download-images", help="fetch the URLs of <dataset>/images.tsv"
    )
    images.add_argument("dataset", help="dataset folder holding images.tsv")
    images.add_argument(
        "--workers",
        type=_int_at_least("--workers", 1),
        default=8,
        help="parallel connections (default 8)",
    )
    images.add_argument(
        "--timeout",
        type=_float_above("--timeout", 0.0, inclusive=False),
        default=10.0,
        help="seconds per attempt (default 10)",
    )
    images.add_argument(
        "--retries",
        type=_int_at_least("--retries", 0),
        default=3,
        help="further attempts on transient errors (default 3)",
    )
    images.add_argument(
        "--backoff",
        type=_float_above("--backoff", 0.0, inclusive=True),
        default=1.0,
        help="base seconds of the exponential backoff (default 1)",
    )
    images.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv (Sequence[str] | None): Arguments; ``sys.argv[1:]`` if ``None``.

    Returns:
        int: Exit status: 0 on success (also when some images failed; they are
        listed in images_failed.tsv), 2 on bad input, 130 when
        ``download-images`` is interrupted with Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
        )
    try:
        if args.command == "amazon2023":
            result = prepare_amazon2023(
                reviews=args.reviews,
                meta=args.meta,
                out=args.out,
                name=args.name,
                min_user=args.min_user,
                min_item=args.min_item,
                text_fields=args.text_fields,
                require_image=args.require_image,
                overwrite=args.overwrite,
            )
        elif args.command == "authors-archive":
            result = convert_authors_archive(
                archive=args.archive,
                out=args.out,
                name=args.name,
                images=args.images,
                item_key=args.item_key,
                trust_pickles=args.trust_pickles,
                overwrite=args.overwrite,
            )
        else:
            summary = download_images(
                args.dataset,
                workers=args.workers,
                timeout=args.timeout,
                retries=args.retries,
                backoff=args.backoff,
                progress=not args.no_progress,
            )
            print(summary.line())
            return 0
    except DownloadInterrupted as exc:
        print(exc.line(), file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(TABLE1_HEADER)
    print(result.stats.table_row())
    return 0
