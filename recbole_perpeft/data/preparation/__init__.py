"""Data preparation: raw sources -> RecBole atomic files with item images.

- :func:`prepare_amazon2023`: Amazon Reviews 2023 reviews + meta jsonl(.gz).
- :func:`convert_authors_archive`: the authors' published archive.
- :func:`download_images`: fetch the URLs of ``images.tsv`` into ``images/``.

The same steps are available on the command line, see
``python -m recbole_perpeft.data.preparation --help``.
"""

from recbole_perpeft.data.preparation.amazon2023 import (
    PreparationResult,
    k_core_filter,
    main_image_url,
    prepare_amazon2023,
)
from recbole_perpeft.data.preparation.atomic import DatasetStats, PreparationError
from recbole_perpeft.data.preparation.authors_archive import convert_authors_archive
from recbole_perpeft.data.preparation.image_download import (
    DownloadSummary,
    download_images,
)

__all__ = [
    "DatasetStats",
    "DownloadSummary",
    "PreparationError",
    "PreparationResult",
    "convert_authors_archive",
    "download_images",
    "k_core_filter",
    "main_image_url",
    "prepare_amazon2023",
]
