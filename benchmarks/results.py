"""What isic-bench measures, as typed values: the table `Row`, the run's `Report`, and the
JSON form both take in results.json and on the way back from a benchmark child.

Every measurement is a small frozen dataclass defined next to the code that measures it
(e.g. `benchmarks.training.UnetRun`). A child returns one; `to_json` turns it into plain
JSON, `from_json(UnetRun, data)` rebuilds it (nested dataclasses, `X | None`,
`tuple[X, ...]`, `list[X]`, `dict[K, V]` with int or str keys), so the parent reads
fields, never string keys.
"""

import dataclasses
import json
import types
import typing

from benchmarks import machine as machine_lib
from benchmarks.config import BenchConfig
from core import files

RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: our figure against its baseline measured in the same run."""

    stage: int
    measure: str
    unit: str
    ours: float | None
    baseline: float | None
    gain: float | None  # how many times better ours is (see `compare`)
    target: str  # "" when the issue sets none
    passed: bool | None  # None when there is no target
    detail: str = ""

    @classmethod
    def compare(
        cls,
        stage: int,
        measure: str,
        unit: str,
        ours: float | None,
        baseline: float | None,
        *,
        lower_is_better: bool = False,
        target: str = "",
        passed: bool | None = None,
        detail: str = "",
    ) -> "Row":
        """A row whose gain is ours/baseline for rates, baseline/ours for times and memory."""
        gain = None
        if ours and baseline:
            gain = baseline / ours if lower_is_better else ours / baseline
        return cls(stage, measure, unit, ours, baseline, gain, target, passed, detail)


@dataclasses.dataclass
class Report:
    """Everything results.json holds; filled stage by stage by `suite.run_stages`."""

    command: str
    config: BenchConfig
    machine: machine_lib.Machine
    stages: dict[str, object] = dataclasses.field(default_factory=dict)  # stage -> its report
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # stage -> run time
    rows: list[Row] = dataclasses.field(default_factory=list)
    total_seconds: float | None = None


def to_json(value):
    """Dataclasses (nested too) as dicts; tuples as lists; other values unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(kind, data):
    """The inverse of `to_json` for a value annotated `kind` (a dataclass or a type hint)."""
    if data is None:
        return None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(
            **{
                f.name: from_json(hints[f.name], data[f.name])
                for f in dataclasses.fields(kind)
                if f.name in data
            }
        )
    if origin in (typing.Union, types.UnionType):  # X | None
        return from_json(next(a for a in args if a is not type(None)), data)
    if origin is tuple:
        return tuple(from_json(args[0], v) for v in data)
    if origin is list:
        return [from_json(args[0], v) for v in data]
    if origin is dict:
        return {args[0](k): from_json(args[1], v) for k, v in data.items()}
    return data


def write_results(path: str, report: Report) -> None:
    """Writes the report as indented JSON, atomically (a reader never sees half a file)."""
    files.write_atomic(path, json.dumps(to_json(report), indent=1) + "\n")


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def format_table(rows: list[Row]) -> str:
    """The rows as an aligned Markdown table."""
    header = ["stage", "measure", "unit", "ours", "baseline", "gain", "target", "pass", "detail"]
    body = [
        [
            str(r.stage),
            r.measure,
            r.unit,
            _fmt(r.ours),
            _fmt(r.baseline),
            f"{r.gain:.2f}x" if r.gain else "-",
            r.target or "-",
            {True: "PASS", False: "FAIL", None: "-"}[r.passed],
            r.detail,
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in [header] + body]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
