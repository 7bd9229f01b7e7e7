"""The scorer interface shared by every metric definition."""

from __future__ import annotations

from typing import ClassVar

from .rows import ScoredSample

__all__ = ["Scorer"]


class Scorer:
    """Accumulate :class:`~gsva.scoring.rows.ScoredSample` s one at a time, then :meth:`result`.

    Subclasses set ``name`` (the ``--scorer`` value) and implement :meth:`add` and :meth:`result`. Results are
    fractions in [0, 1] (papers print them ×100) plus integer counts.
    """

    name: ClassVar[str] = ""

    def add(self, sample: ScoredSample) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float | int | None]:
        raise NotImplementedError
