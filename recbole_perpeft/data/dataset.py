"""The multimodal sequential dataset: RecBole's interactions plus item content.

RecBole remaps raw item tokens to internal ids (0 is padding). The item content
(texts and image paths) is read from the raw atomic files and laid out by
internal id, so that ``item_texts[i]`` and ``item_image_paths[i]`` belong to the
item RecBole calls ``i``.
"""

from __future__ import annotations

import os
from logging import getLogger

import numpy as np
import pandas as pd
from recbole.data.dataset import SequentialDataset

logger = getLogger(__name__)


class MultimodalSequentialDataset(SequentialDataset):
    """RecBole's :class:`SequentialDataset` with item texts and image paths.

    Attributes:
        item_texts (list[str]): text of each internal item id; ``""`` for
            padding and for items without text.
        item_image_paths (list[str | None]): image file of each internal item id,
            or ``None``.
    """

    def __init__(self, config) -> None:
        super().__init__(config)
        self.item_texts, self.item_image_paths = self._load_item_content()

    def _item_file(self) -> str:
        return os.path.join(self.dataset_path, f"{self.dataset_name}.item")

    def _read_item_table(self) -> pd.DataFrame | None:
        path = self._item_file()
        if not os.path.isfile(path):
            return None
        sep = self.config["field_separator"]
        table = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            encoding=self.config["encoding"],
            quoting=3,
            engine="python",
        )
        # Atomic headers are "name:type"; keep the names.
        table.columns = [column.split(":")[0] for column in table.columns]
        return table

    def _load_item_content(self) -> tuple[list[str], list[str | None]]:
        modalities = list(self.config["modalities"] or [])
        text_fields = list(self.config["text_fields"] or [])
        table = self._read_item_table()
        iid = self.iid_field
        n_items = self.item_num
        texts = [""] * n_items
        image_paths: list[str | None] = [None] * n_items
        if table is None:
            if "text" in modalities:
                raise ValueError(
                    f"`text_fields`: the modality 'text' needs the item file "
                    f"{self._item_file()}, which does not exist."
                )
            return texts, image_paths
        if iid not in table.columns:
            raise ValueError(
                f"`ITEM_ID_FIELD`: {self._item_file()} has no column '{iid}'; "
                f"its columns are {list(table.columns)}."
            )
        missing = [field for field in text_fields if field not in table.columns]
        if "text" in modalities and missing:
            allowed = [c for c in table.columns if c != iid]
            raise ValueError(
                f"`text_fields`: {missing} not in {self._item_file()}; "
                f"expected a subset of {allowed}, got {text_fields}."
            )
        token2id = self.field2token_id[iid]
        raw_ids = table[iid].to_numpy()
        internal = np.array([token2id.get(raw, -1) for raw in raw_ids])
        known = internal > 0
        if "text" in modalities and text_fields:
            joined = table[text_fields].agg(" ".join, axis=1).str.strip()
            for index, text in zip(internal[known], joined.to_numpy()[known]):
                texts[index] = text
        if "image" in modalities:
            from recbole_perpeft.data.images import find_item_images

            column = table["image"].tolist() if "image" in table.columns else None
            paths = find_item_images(
                self.dataset_path,
                list(raw_ids),
                image_dir=self.config["image_dir"],
                image_column_values=column,
            )
            for index, path in zip(internal[known], np.array(paths, dtype=object)[known]):
                image_paths[index] = path
        n_without_text = sum(1 for text in texts[1:] if not text)
        if "text" in modalities and n_without_text:
            logger.warning(
                f"{n_without_text} of {n_items - 1} items have no text; "
                "they get the learned 'missing text' embedding."
            )
        return texts, image_paths
