"""Settings of the filters wing: the QE score.
"""

from __future__ import annotations

from pydantic import Field

from gdig_core.config.base import Section
from gdig_core.config.selection import SelectionConfig


class QEConfig(Section):
    """Quality estimation from the base model itself: dual conditional cross-entropy (gdig_core.filters.qe),
    two forward passes per pool pair, no backward."""

    #: None: computed when a selection method or pre-filter uses it; true: always (the evidence
    #: tables then show its ROC AUC per noise kind); false: never (a method needing it is refused).
    enabled: bool | None = None
    batch_size: int = Field(default=16, gt=0)


def uses_qe(selection: SelectionConfig) -> list[str]:
    """Names of the selection methods that need the QE scores (the ``qe`` method or pre-filter)."""
    return [m.name for m in selection.methods if m.method == "qe" or "qe" in m.prefilter]
