"""Multimodal SASRec: the shared backbone of FrozenMM, GlobalPEFT and PerPEFT.

Item vector = ID embedding + ``mm_weight`` * projector(encoder(item content)).
The encoder may carry a bank of PEFT modules (one per user group); each group
also has its own projector. Data flows one way: content store -> encoder (with
the active group's module) -> projector -> item vectors -> SASRec -> scores.

NOTE: the SASRec trains on one example per user (the last MAX_ITEM_LIST_LENGTH
training items, a target and one sampled negative at every position), as the
original SASRec and the paper do, not on RecBole's one example per prefix.
"""

from __future__ import annotations

import os
from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType, set_color
from torch import nn
from tqdm import tqdm

from recbole_perpeft.data.content import ItemContent
from recbole_perpeft.data.user_sequences import UserSequenceLoader
from recbole_perpeft.encoders import build_encoder
from recbole_perpeft.encoders.base import ItemEncoder
from recbole_perpeft.model.projector import Projector
from recbole_perpeft.tuners.base import GroupModuleBank

logger = getLogger(__name__)


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class MultimodalSASRec(SequentialRecommender):
    """SASRec over item vectors that mix ID embeddings and encoder embeddings.

    Subclasses choose how many group modules there are (:meth:`n_modules`) and
    build the PEFT bank (:meth:`build_bank`; None keeps the encoder frozen).
    """

    input_type = InputType.POINTWISE
    # Whether the encoder's output can be computed once for the whole catalogue.
    frozen_encoder = False

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)

        # load parameters info
        self.hidden_size = config["hidden_size"]
        self.mm_weight = config["mm_weight"]
        self.encode_batch_size = config["encode_batch_size"]
        self.text_length_buckets = config["text_length_buckets"]
        self.show_progress = config["show_progress"]
        # RecBole's enable_amp autocasts training steps (bf16 on CPU, fp16 on
        # CUDA); the catalogue encodings of evaluation follow it
        self.enable_amp = bool(config["enable_amp"])
        if self.enable_amp and self.device.type == "cpu" and not cpu_has_fast_bf16():
            logger.warning(
                "`enable_amp`: True autocasts to bf16 on the CPU, which this CPU has "
                "no native bf16 kernels for; measured here it made a MiniLM training "
                "step 30x slower. Set enable_amp: False on this machine."
            )
        self.n_users = dataset.user_num
        self.initializer_range = config["initializer_range"]
        # Pretrained foundation weights are re-read from encoder_path on load;
        # randomly initialised ones cannot be, so they go into the checkpoint.
        self.save_foundation = config["encoder_random_init"] is not None

        # define the SASRec layers
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=config["n_layers"],
            n_heads=config["n_heads"],
            hidden_size=self.hidden_size,
            inner_size=config["inner_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"],
        )
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.apply(self._init_weights)

        # define the item tower: encoder (+ PEFT bank) and one projector per module
        encoder = build_encoder(config)
        self.content = self._build_content(config, dataset, encoder)
        self.bank = self.build_bank(config, encoder)
        if self.bank is not None:
            self.bank.prepare(self.content)
        self.encoder = encoder
        self.foundation_parameters = encoder.count_parameters()
        # a side network (IISAN) may output other widths than the encoder
        dims = self.bank.modality_dims if self.bank is not None else encoder.modality_dims
        self.modalities = encoder.modalities
        self.projectors = nn.ModuleList(
            Projector(sum(dims[m] for m in self.modalities), self.hidden_size)
            for _ in range(self.n_modules(config, dataset))
        )
        self.projectors.apply(self._init_weights)
        # learned embeddings for items whose image or text is missing or broken
        self.missing = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(dims[m])) for m in self.modalities}
        )
        # the group (module index) of each user; part of every checkpoint
        self.register_buffer("user_group", torch.zeros(self.n_users, dtype=torch.long))
        self._catalogue_cache: dict[int, torch.Tensor] = {}
        # FrozenMM: the frozen encoder's output, computed once on first use
        self._frozen_features: dict[str, torch.Tensor] | None = None
        # distinct items encoded by training steps so far (for throughput figures)
        self.encoded_items = 0

    # ---- to override --------------------------------------------------------
    def n_modules(self, config, dataset) -> int:
        """Number of group modules (and projectors)."""
        return 1

    def build_bank(self, config, encoder: ItemEncoder) -> GroupModuleBank | None:
        """The PEFT bank on ``encoder``, or None to keep the encoder frozen."""
        return None

    # ---- construction helpers ----------------------------------------------
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def _build_content(self, config, dataset, encoder: ItemEncoder) -> ItemContent:
        texts = list(dataset.item_texts)
        has_text = torch.tensor([bool(t) for t in texts])
        input_ids = lengths = None
        if "text" in encoder.modalities:
            input_ids, lengths = encoder.tokenize(texts, config["text_max_length"])
        image_store = None
        if "image" in encoder.modalities:
            from recbole_perpeft.data.image_store import ImageStore

            cache_dir = config["content_cache_dir"] or os.path.join(
                config["checkpoint_dir"], "content_cache"
            )
            image_store = ImageStore.build_or_load(
                list(dataset.item_image_paths),
                encoder.image_size,
                os.path.join(cache_dir, f"{config['dataset']}-images-{encoder.image_size}"),
                show_progress=self.show_progress,
            )
        return ItemContent(input_ids, lengths, has_text, image_store)

    # ---- item tower ---------------------------------------------------------
    def _embed(self, item_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.bank is not None:
            return self.bank.embed(item_ids, self.content, self.device)
        return self.encoder(self.content.gather(item_ids).to(self.device))

    def _raw_embeddings(self, item_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder embeddings of ``item_ids``, in ``text_length_buckets`` chunks of
        similar text length so that each chunk is padded only to its own longest."""
        if self.frozen_encoder:
            if self._frozen_features is None:
                self._frozen_features = self._encode_frozen_catalogue()
            return {m: f[item_ids] for m, f in self._frozen_features.items()}
        order = self.content.by_text_length(item_ids)
        size = max(1, -(-len(item_ids) // self.text_length_buckets))
        chunks = [self._embed(item_ids[part]) for part in order.split(size)]
        inverse = torch.argsort(order).to(self.device)
        return {m: torch.cat([c[m] for c in chunks])[inverse] for m in chunks[0]}

    def _fuse(self, item_ids: torch.Tensor, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        ids = item_ids.cpu()
        for modality in self.modalities:
            present = self.content.has_image if modality == "image" else self.content.has_text
            mask = present[ids].to(raw[modality].device).unsqueeze(-1)
            missing = self.missing[modality].to(raw[modality].dtype)
            parts.append(torch.where(mask, raw[modality], missing))
        return torch.cat(parts, dim=-1)  # [N, D]

    def content_vectors(self, item_ids: torch.Tensor, module: int) -> torch.Tensor:
        """Projected encoder embeddings [N, H] of ``item_ids`` with module ``module``."""
        if self.bank is not None:
            self.bank.activate(module)
        raw = self._raw_embeddings(item_ids)
        return self.projectors[module](self._fuse(item_ids, raw))

    def item_vectors(self, item_ids: torch.Tensor, module: int) -> torch.Tensor:
        """Item vectors [N, H]: ID embedding + mm_weight * content vector; 0 for padding."""
        ids = item_ids.to(self.device)
        vectors = self.item_embedding(ids) + self.mm_weight * self.content_vectors(ids, module)
        return vectors * (ids != 0).unsqueeze(-1).to(vectors.dtype)

    @torch.no_grad()
    def _encode_frozen_catalogue(self) -> dict[str, torch.Tensor]:
        features: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        ids = torch.arange(self.n_items)
        chunks = ids.split(self.encode_batch_size)
        self.encoder.eval()
        for chunk in self._progress(chunks, "Encode items"):
            with self._autocast():
                raw = self.encoder(self.content.gather(chunk).to(self.device))
            for modality, value in raw.items():
                features[modality].append(value.float())
        return {m: torch.cat(v) for m, v in features.items()}

    def _autocast(self):
        """Mixed precision as RecBole's trainer uses it for training steps."""
        return torch.autocast(device_type=self.device.type, enabled=self.enable_amp)

    def _progress(self, iterable, desc: str):
        if not self.show_progress:
            return iterable
        return tqdm(iterable, total=len(iterable), ncols=100, desc=set_color(f"{desc:<11}", "pink"))

    @torch.no_grad()
    def catalogue_vectors(self, module: int) -> torch.Tensor:
        """Vectors [n_items, H] of the whole catalogue for one module, computed once
        per evaluation (the cache is dropped when the model goes back to training)."""
        if module not in self._catalogue_cache:
            label = f"Encode g{module}" if len(self.projectors) > 1 else "Encode items"
            self._catalogue_cache[module] = self._encode_items(
                torch.arange(self.n_items), module, label
            )
        return self._catalogue_cache[module]

    @torch.no_grad()
    def _encode_items(self, item_ids: torch.Tensor, module: int, label: str) -> torch.Tensor:
        """Vectors [N, H] of ``item_ids`` in encode_batch_size chunks of similar
        text length, as float32 whatever the autocast."""
        order = self.content.by_text_length(item_ids)
        chunks = item_ids[order].split(self.encode_batch_size)
        with self._autocast():
            parts = [
                self.item_vectors(chunk, module).float()
                for chunk in self._progress(chunks, label)
            ]
        vectors = torch.empty(len(item_ids), self.hidden_size, device=self.device)
        vectors[order.to(self.device)] = torch.cat(parts)
        return vectors

    def train(self, mode: bool = True):
        if mode:
            # weights are about to change: catalogue vectors go stale
            self._catalogue_cache = {}
        return super().train(mode)

    def module_parameter_counts(self) -> tuple[int, int]:
        """Trainable parameters of one group module: (PEFT module, projector)."""
        peft = self.bank.module_parameter_count(0) if self.bank is not None else 0
        return peft, sum(p.numel() for p in self.projectors[0].parameters())

    def trainable_percent(self, modules: int = 1) -> float:
        """Trainable parameters of ``modules`` group modules, in % of the encoder's."""
        return 100 * modules * sum(self.module_parameter_counts()) / max(self.foundation_parameters, 1)

    # ---- sequence tower -----------------------------------------------------
    def encode_sequences(self, item_seq: torch.Tensor, item_seq_emb: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, H] of sequences given their item vectors [B, L, H]."""
        position_ids = torch.arange(item_seq.size(1), device=item_seq.device)
        input_emb = item_seq_emb + self.position_embedding(position_ids).unsqueeze(0)
        input_emb = self.dropout(self.LayerNorm(input_emb))
        attention_mask = self.get_attention_mask(item_seq)
        return self.trm_encoder(input_emb, attention_mask, output_all_encoded_layers=True)[-1]

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, module: int) -> torch.Tensor:
        """Final hidden state [B, H] of each sequence, with one module's item vectors.

        Args:
            item_seq (torch.Tensor): item ids [B, L], left-aligned, 0-padded.
            item_seq_len (torch.Tensor): lengths [B].
            module (int): the group module whose item vectors are used.
        """
        table = self.catalogue_vectors(module) if not self.training else None
        if table is not None:
            seq_emb = table[item_seq]
        else:
            seq_emb = self.item_vectors(item_seq.flatten(), module).view(*item_seq.shape, -1)
        output = self.encode_sequences(item_seq, seq_emb)
        return self.gather_indexes(output, item_seq_len - 1)

    # ---- training -----------------------------------------------------------
    def _batch_module(self, interaction) -> int:
        groups = interaction[UserSequenceLoader.GROUP_ID]
        first = int(groups[0])
        if bool((groups != first).any()):
            raise ValueError(
                "a training batch mixes user groups; each batch must hold one group, "
                "since one PEFT module is active per step."
            )
        return first

    def calculate_loss(self, interaction) -> torch.Tensor:
        """BCE with one sampled negative at every position of each user's sequence.

        Each distinct item of the batch is encoded once.

        Returns:
            torch.Tensor: the mean loss over real positions, a scalar.
        """
        module = self._batch_module(interaction)
        item_seq = interaction[self.ITEM_SEQ]  # [B, L]
        targets = interaction[UserSequenceLoader.TARGET_SEQ]  # [B, L]
        negatives = interaction[UserSequenceLoader.NEG_SEQ]  # [B, L]
        all_ids = torch.cat([item_seq, targets, negatives])
        unique_ids, inverse = torch.unique(all_ids, return_inverse=True)
        self.encoded_items += int((unique_ids != 0).sum())
        vectors = self.item_vectors(unique_ids, module)[inverse]  # [3B, L, H]
        seq_emb, pos_emb, neg_emb = vectors.chunk(3)
        output = self.encode_sequences(item_seq, seq_emb)  # [B, L, H]
        pos_logits = (output * pos_emb).sum(-1)
        neg_logits = (output * neg_emb).sum(-1)
        real = (targets != 0).to(output.dtype)
        loss = F.binary_cross_entropy_with_logits(
            pos_logits, torch.ones_like(pos_logits), reduction="none"
        ) + F.binary_cross_entropy_with_logits(
            neg_logits, torch.zeros_like(neg_logits), reduction="none"
        )
        return (loss * real).sum() / real.sum().clamp(min=1.0)

    # ---- inference ----------------------------------------------------------
    def _groups_of(self, interaction) -> torch.Tensor:
        return self.user_group[interaction[self.USER_ID].to(self.user_group.device)]

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """Scores [B, n_items] of every item, each user with their group's module.

        The shared transformer runs once over the whole batch, each sequence
        read through its group's catalogue vectors; then one matrix product per
        group present in the batch.
        """
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        groups = self._groups_of(interaction)
        modules = torch.unique(groups).tolist()
        if len(modules) == 1:
            return self.forward(item_seq, item_seq_len, modules[0]) @ self.catalogue_vectors(modules[0]).T
        tables = {module: self.catalogue_vectors(module) for module in modules}
        rows_of = {m: (groups == m).nonzero(as_tuple=True)[0] for m in modules}
        seq_emb = torch.empty(*item_seq.shape, self.hidden_size, device=item_seq.device)
        for module, rows in rows_of.items():
            seq_emb[rows] = tables[module][item_seq[rows]]
        seq_output = self.gather_indexes(self.encode_sequences(item_seq, seq_emb), item_seq_len - 1)
        scores = torch.empty(len(item_seq), self.n_items, device=item_seq.device)
        for module, rows in rows_of.items():
            scores[rows] = seq_output[rows] @ tables[module].T
        return scores

    def predict(self, interaction) -> torch.Tensor:
        """Scores [B] of the item in ``interaction`` (sampled evaluation)."""
        scores = self.full_sort_predict(interaction)
        items = interaction[self.ITEM_ID].unsqueeze(-1)
        return scores.gather(1, items).squeeze(-1)

    @torch.no_grad()
    def user_representations(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, module: int = 0) -> torch.Tensor:
        """Final hidden states [U, H] of users' sequences with module ``module``.

        Only the items the sequences hold are encoded (once each), not the
        whole catalogue, unless the catalogue's vectors are cached already.
        """
        was_training = self.training
        self.eval()
        if module in self._catalogue_cache:
            items, table = item_seq, self._catalogue_cache[module]
        else:
            unique, inverse = torch.unique(item_seq, return_inverse=True)
            items = inverse.view(item_seq.shape)
            table = self._encode_items(unique, module, "Encode seqs")
        outputs = []
        for rows in torch.arange(len(item_seq)).split(self.encode_batch_size):
            seq = item_seq[rows].to(self.device)
            hidden = self.encode_sequences(seq, table[items[rows].to(self.device)])
            outputs.append(self.gather_indexes(hidden, item_seq_len[rows].to(self.device) - 1))
        self.train(was_training)
        return torch.cat(outputs)

    # ---- checkpoints --------------------------------------------------------
    def _frozen_foundation_keys(self) -> set[str]:
        """State keys of the foundation model's own (frozen) weights, which are
        re-read from ``encoder_path`` rather than saved in every checkpoint."""
        if self.save_foundation:
            return set()
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        adapter = set()
        if self.bank is not None:
            for index in range(self.bank.n_modules):
                adapter.update(id(t) for t in self.bank.module_state_dict(index).values())
        keys = set()
        for name, tensor in super().state_dict(keep_vars=True).items():
            if name.startswith("encoder.") and name not in trainable and id(tensor) not in adapter:
                keys.add(name)
        return keys

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for key in self._frozen_foundation_keys():
            state.pop(prefix + key, None)
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        expected = set(super().state_dict().keys()) - self._frozen_foundation_keys()
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - set(super().state_dict().keys()))
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"checkpoint does not fit {type(self).__name__}: missing keys "
                f"{missing[:5]} ({len(missing)}), unexpected keys {unexpected[:5]} "
                f"({len(unexpected)})"
            )
        if missing or unexpected:
            logger.warning(f"checkpoint: missing keys {missing}, unexpected keys {unexpected}")
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        self._catalogue_cache = {}
        return result
