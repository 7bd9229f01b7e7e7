"""Opening the paper's training datasets by name, in the official ``--dataset_dir`` layout, as conversation datasets.

A data spec maps family -> dataset names (LeapLabTHU/GSVA at 618dc79, ``main.py``, ``parse_args``: ``--sem_seg_data``,
``--refer_seg_data``, ``--vqa_data``, ``--reason_seg_data``)::

    sem_seg:    ade20k, cocostuff, mapillary, paco_lvis, pascal_part          (<dataset_dir>/..., gsva.data.semseg)
    refer_seg:  refclef, refcoco, refcoco+, refcocog, grefcoco, refzom        (<dataset_dir>/refer_seg/<name>)
                custom:<folder>                                              (our custom format, gsva.data.refer)
    vqa:        llava_instruct_150k (any <dataset_dir>/llava_dataset/<name>.json in that format)
    reason_seg: ReasonSeg|train  (splits joined by "_", e.g. ReasonSeg|train_val; <dataset_dir>/reason_seg/<name>/)

Opening happens in two stages so a from-scratch tokenizer can be trained on the text first:
:func:`open_sources` reads the annotations (no tokenizer needed), :func:`source_texts` lists their text, and
:func:`conversation_datasets` wraps them as conversation datasets for :class:`gsva.data.mixture.MixtureDataset`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import GSVAConfig
from ..errors import InputError
from ..tokens import ControlTokenIds
from .gres_dataset import GRESConversationDataset
from .reasonseg import ReasonSeg, read_explanations
from .refer import REFS_FILES, AnnotationError, ReferDataset, open_custom_dataset, open_refer_dataset
from .semseg import SEMSEG_DATASETS, open_semseg
from .train_sets import ReasonSegConversations, SemSegConversations, VQAConversations, reasonseg_texts
from .vqa import LlavaInstruct

__all__ = ["FAMILIES", "PAPER_DATASETS", "ReasonSegSource", "validate_spec", "open_sources", "source_texts",
           "conversation_datasets"]

FAMILIES = ("sem_seg", "refer_seg", "vqa", "reason_seg")
PAPER_DATASETS = {
    "sem_seg": ["ade20k", "cocostuff", "mapillary", "paco_lvis", "pascal_part"],
    "refer_seg": ["refclef", "refcoco", "refcoco+", "refcocog", "grefcoco"],
    "vqa": ["llava_instruct_150k"],
    "reason_seg": ["ReasonSeg|train"],
}
"""The paper's pre-training mixture (appendix Table A3; the official script adds grefcoco to refer_seg)."""


@dataclass
class ReasonSegSource:
    """ReasonSeg training splits plus the explanations of ``explanatory/train.json`` (empty if absent)."""

    name: str
    splits: list[ReasonSeg]
    explanations: dict[str, str]

    def __len__(self) -> int:
        return sum(len(s.records()) for s in self.splits)


def validate_spec(spec: Mapping[str, Sequence[str]]) -> None:
    """Raise ValueError for an unknown family or dataset name, or an empty family."""
    if not isinstance(spec, Mapping) or not spec:
        raise InputError("expected a non-empty mapping {family: [dataset names]}")
    for family, names in spec.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{family}: expected a list of dataset names, got {names!r}")
        if family not in FAMILIES:
            raise InputError(f"unknown dataset family {family!r}; known: {', '.join(FAMILIES)}")
        if not names:
            raise InputError(f"family {family!r} lists no dataset")
        for name in names:
            ok = {"sem_seg": lambda n: n in SEMSEG_DATASETS,
                  "refer_seg": lambda n: n in REFS_FILES or (n.startswith("custom:") and len(n) > 7),
                  "vqa": lambda n: bool(n) and "/" not in n,
                  "reason_seg": lambda n: n.count("|") == 1 and all(n.split("|"))}[family](name)
            if not ok:
                raise InputError(f"{family}: unknown dataset {name!r} (see gsva.data.training_mix)")


def _open_reason_seg(dataset_dir: Path, name: str) -> ReasonSegSource:
    folder, splits = name.split("|")
    root = dataset_dir / "reason_seg" / folder
    readers = [ReasonSeg(root / split, all_texts=True) for split in splits.split("_")]
    explanations_path = root / "explanatory" / "train.json"
    explanations = read_explanations(explanations_path) if explanations_path.exists() else {}
    return ReasonSegSource(name, readers, explanations)


def open_sources(spec: Mapping[str, Sequence[str]], dataset_dir: str | Path, refer_split: str = "train") -> dict:
    """Read every dataset of ``spec`` under ``dataset_dir``: {family: [reader, ...]}.

    Referring datasets are restricted to ``refer_split`` (a dataset without that split is an error). Raises
    ValueError for an unknown name and AnnotationError (naming the file) for missing or malformed data.
    """
    validate_spec(spec)
    root = Path(dataset_dir)
    out: dict[str, list] = {}
    for family, names in spec.items():
        for name in names:
            if family == "sem_seg":
                source = open_semseg(name, root)
            elif family == "refer_seg":
                source = open_custom_dataset(name[7:]) if name.startswith("custom:") \
                    else open_refer_dataset(root / "refer_seg", name)
                if refer_split not in source.splits():
                    raise AnnotationError(f"{source.refs_path}: no {refer_split!r} split "
                                          f"(has {', '.join(source.splits())})")
            elif family == "vqa":
                source = LlavaInstruct.from_dataset_dir(root, name)
            else:
                source = _open_reason_seg(root, name)
            out.setdefault(family, []).append(source)
    return out


def source_texts(sources: Mapping[str, list], refer_split: str = "train") -> list[str]:
    """All text of the opened sources (class names, expressions, VQA rounds, ReasonSeg queries/explanations)."""
    texts: list[str] = []
    for family, readers in sources.items():
        for r in readers:
            if isinstance(r, ReferDataset):
                texts += [e.sentence for rec in r.records(refer_split) for e in rec.expressions]
            elif isinstance(r, ReasonSegSource):
                texts += reasonseg_texts(r.splits, r.explanations)
            else:
                texts += r.texts()
    return texts


def conversation_datasets(sources: Mapping[str, list], tokenizer, token_ids: ControlTokenIds, config: GSVAConfig,
                          max_targets: int = 5, seed: int = 0, explanatory: float = 0.1,
                          refer_split: str = "train") -> dict[str, list]:
    """Wrap opened sources as conversation datasets: {family: [dataset, ...]} (each has ``sample(i, rng)``)."""
    out: dict[str, list] = {}
    for family, readers in sources.items():
        for r in readers:
            s = seed * 1000 + len(out.get(family, []))  # distinct draws per dataset
            if isinstance(r, ReferDataset):
                ds = GRESConversationDataset(r, refer_split, tokenizer, token_ids, config, max_targets, seed=s)
            elif isinstance(r, ReasonSegSource):
                ds = ReasonSegConversations(r.splits, r.explanations, tokenizer, token_ids, config, max_targets, s,
                                            explanatory=explanatory)
            elif isinstance(r, LlavaInstruct):
                ds = VQAConversations(r, tokenizer, token_ids, config, max_targets, s)
            else:
                ds = SemSegConversations(r, tokenizer, token_ids, config, max_targets, s)
            out.setdefault(family, []).append(ds)
    return out
