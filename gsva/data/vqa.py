"""Reader for LLaVA-Instruct-150K, the VQA family of the paper's pre-training mixture (no masks).

Layout (LeapLabTHU/GSVA at 618dc79, ``data/vqa_dataset.py``, ``VQADataset``)::

    <dataset_dir>/llava_dataset/llava_instruct_150k.json   [{"id", "image", "conversations": [{"from", "value"}]}]
    <dataset_dir>/coco/train2017/<image>

``from`` is "human" or "gpt". As the official loader does, a leading "gpt" turn is dropped and every ``<image>``
marker is removed from the text (the image is placed once, at the start of the first question, when the
conversation is rendered). Text is kept verbatim otherwise; it is always encoded as plain text, so a "[SEG]" typed
in it never becomes a control token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..constants import IMAGE_TOKEN
from .refer import AnnotationError, read_json

__all__ = ["VQARecord", "LlavaInstruct"]


@dataclass(frozen=True)
class VQARecord:
    """One image with its (question, answer) rounds in order."""

    image_path: Path
    rounds: tuple[tuple[str, str], ...]


class LlavaInstruct:
    """Index of a LLaVA-Instruct JSON file (``llava_instruct_150k.json`` or any file in its format).

    Raises AnnotationError naming the file and entry for a malformed record (checked when the file is opened).
    """

    def __init__(self, json_path: str | Path, image_dir: str | Path) -> None:
        self.json_path, self.image_dir = Path(json_path), Path(image_dir)
        data = read_json(self.json_path)
        if not isinstance(data, list) or not data:
            raise AnnotationError(f"{self.json_path}: expected a non-empty list of records")
        self.records: list[VQARecord] = [self._parse(item, i) for i, item in enumerate(data)]

    @classmethod
    def from_dataset_dir(cls, dataset_dir: str | Path, name: str = "llava_instruct_150k") -> "LlavaInstruct":
        root = Path(dataset_dir)
        return cls(root / "llava_dataset" / f"{name}.json", root / "coco" / "train2017")

    def _parse(self, item, i: int) -> VQARecord:
        where = f"{self.json_path}: record #{i}"
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) \
                or not isinstance(item.get("conversations"), list):
            raise AnnotationError(f"{where} needs 'image' (str) and 'conversations' (list)")
        turns = item["conversations"]
        if turns and isinstance(turns[0], dict) and turns[0].get("from") == "gpt":
            turns = turns[1:]  # official: skip a leading answer
        if len(turns) < 2 or len(turns) % 2:
            raise AnnotationError(f"{where} (id={item.get('id')}): needs human/gpt pairs, got {len(turns)} turns")
        rounds = []
        for k in range(0, len(turns), 2):
            q, a = turns[k], turns[k + 1]
            if not (isinstance(q, dict) and isinstance(a, dict) and q.get("from") == "human"
                    and a.get("from") == "gpt" and isinstance(q.get("value"), str)
                    and isinstance(a.get("value"), str)):
                raise AnnotationError(f"{where} (id={item.get('id')}): turns {k}, {k + 1} are not a human question "
                                      "followed by a gpt answer")
            rounds.append((q["value"].replace(IMAGE_TOKEN, "").strip(), a["value"].strip()))
        return VQARecord(self.image_dir / item["image"], tuple(rounds))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> VQARecord:
        return self.records[index]

    def texts(self) -> list[str]:
        return [t for r in self.records for qa in r.rounds for t in qa]
