"""What every stage returns: the rows kept, the rows rejected, and a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame


@dataclass
class StageReport:
    """Rows in, rows out, dropped per reason, seconds, and stage-specific details."""

    stage: str
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    removed: int | None = None  # rows quarantined, each once (``dropped`` counts a row under each of its reasons)

    @property
    def rows_removed(self) -> int:
        return self.removed if self.removed is not None else sum(self.dropped.values())

    def counts(self) -> dict[str, int]:
        """Flat counters for the runs table."""
        flat = {"rows_in": self.rows_in, "rows_out": self.rows_out}
        flat.update({f"dropped.{reason}": n for reason, n in sorted(self.dropped.items())})
        flat.update({k: int(v) for k, v in self.details.items() if isinstance(v, int) and not isinstance(v, bool)})
        return flat


@dataclass
class StageResult:
    kept: DataFrame
    rejected: DataFrame | None
    report: StageReport
