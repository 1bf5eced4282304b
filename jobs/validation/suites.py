"""Great Expectations suites with fulcrum policies, and their row-level Spark form.

A suite is GX's own JSON (``expectations/*.json``). Each expectation's ``meta`` carries
``policy`` (``warn`` | ``drop`` | ``fail``, default ``warn``) and ``name``, a snake_case
handle used as the quarantine reason and as the key for policy overrides in the pipeline
YAML (default: ``<column>_<short type>``). Row-level (column map) expectations compile
into a Spark predicate that is true where a row fails, with GX's semantics: every map
expectation but the null checks ignores null values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import Column
from pyspark.sql import functions as F

from jobs.errors import ConfigError

POLICIES = ("warn", "drop", "fail")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


class SuiteError(ConfigError):
    """The suite file is missing, not JSON, or names an expectation GX does not know."""


def _between(c: Column, kw: dict[str, Any]) -> Column:
    bounds = [kw[k] for k in ("min_value", "max_value") if kw.get(k) is not None]
    numeric = all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
    value = c.try_cast("double") if numeric else c  # numbers read as text compare as numbers, never as an error
    ok = F.lit(True)
    if kw.get("min_value") is not None:
        ok = ok & ((value > kw["min_value"]) if kw.get("strict_min") else (value >= kw["min_value"]))
    if kw.get("max_value") is not None:
        ok = ok & ((value < kw["max_value"]) if kw.get("strict_max") else (value <= kw["max_value"]))
    return (value.isNull() | ~ok) if numeric else ~ok  # text that is no number is outside any numeric range


# type -> function(column, kwargs) giving "the value is unexpected" for a non-null value
_NONNULL_FAILS: dict[str, Callable[[Column, dict[str, Any]], Column]] = {
    "expect_column_values_to_be_between": _between,
    "expect_column_values_to_be_in_set": lambda c, kw: ~c.isin(list(kw["value_set"])),
    "expect_column_values_to_not_be_in_set": lambda c, kw: c.isin(list(kw["value_set"])),
    "expect_column_values_to_match_regex": lambda c, kw: ~c.cast("string").rlike(kw["regex"]),
    "expect_column_values_to_not_match_regex": lambda c, kw: c.cast("string").rlike(kw["regex"]),
    "expect_column_value_lengths_to_be_between": lambda c, kw: _between(F.length(c.cast("string")), kw),
}
_NULL_CHECKS = {"expect_column_values_to_not_be_null": True, "expect_column_values_to_be_null": False}
ROW_LEVEL = frozenset(_NONNULL_FAILS) | frozenset(_NULL_CHECKS)


@dataclass(frozen=True)
class Rule:
    """One expectation of a suite, with fulcrum's name and policy."""

    name: str
    type: str
    kwargs: dict[str, Any]
    policy: str
    # The predicate, built once: each Column operation is a py4j round trip (about 20 ms for a range check),
    # and validation asks for a rule's predicate in the aggregation, the tagging, the filter and the lists.
    _predicate: dict[str, Column] = field(default_factory=dict, compare=False, repr=False)

    @property
    def row_level(self) -> bool:
        return self.type in ROW_LEVEL and "row_condition" not in self.kwargs

    @property
    def column(self) -> str | None:
        return self.kwargs.get("column")

    def fails(self) -> Column:
        """Spark predicate: true where a row fails this expectation (GX's semantics)."""
        if not self.row_level:
            raise ValueError(f"{self.name} ({self.type}) is not a row-level expectation")
        if "fails" not in self._predicate:
            col = F.col(f"`{self.column}`")
            if self.type in _NULL_CHECKS:
                fails = col.isNull() if _NULL_CHECKS[self.type] else col.isNotNull()
            else:
                fails = col.isNotNull() & F.coalesce(_NONNULL_FAILS[self.type](col, self.kwargs), F.lit(False))
            self._predicate["fails"] = fails
        return self._predicate["fails"]


def default_name(exp_type: str, kwargs: dict[str, Any]) -> str:
    short = re.sub(r"^expect_(column_values_to_|column_|table_|multicolumn_|compound_columns_)?", "", exp_type)
    subject = kwargs.get("column") or kwargs.get("column_A") or "table"
    return re.sub(r"[^a-z0-9_]+", "_", f"{subject}_{short}".lower()).strip("_")


def bundled(name: str) -> Path:
    """The suite fulcrum ships for a sample dataset kind (``expectations/<name>.json``, installed with the package)."""
    from importlib.resources import as_file, files

    with as_file(files("expectations") / f"{name}.json") as path:  # a real file in any install but a zip
        if not path.is_file():
            raise SuiteError(f"fulcrum's bundled suite {name}.json is not installed beside the package",
                             fix="reinstall fulcrum (pip install .), which ships expectations/*.json")  # fmt: skip
        return Path(path)


def load_suite(path: str | Path, overrides: dict[str, str] | None = None):
    """Read a GX suite JSON; return (GX ExpectationSuite, rules in suite order)."""
    from great_expectations.core.expectation_suite import ExpectationSuite

    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite not found: {path}", fix="set `suite:` in the config to a GX suite JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path} is not valid JSON: {exc}",
                         fix="correct the line and column it names (`fulcrum suite init` writes a valid one)") from None  # fmt: skip
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise SuiteError(f"{path} is not a GX suite: it needs a `name` and a list of `expectations`",
                         fix="start from `fulcrum suite init CONFIG` or a bundled suite (expectations/*.json)")  # fmt: skip
    rules = _rules(data["expectations"], path, overrides or {})
    for exp, rule in zip(data["expectations"], rules, strict=True):  # GX reports and Data Docs show both
        exp["meta"] = {**(exp.get("meta") or {}), "name": rule.name, "policy": rule.policy}
    try:
        suite = ExpectationSuite(**data)
    except Exception as exc:  # GX raises several types; all mean an invalid suite
        raise SuiteError(f"{path}: Great Expectations rejected the suite: {exc}",
                         fix="check each expectation's `type` and `kwargs` against the GX gallery") from None  # fmt: skip
    return suite, rules


COLUMN_KWARGS = ("column", "column_A", "column_B")  # one column each; ``column_list`` and ``column_set``: several


def _lake_columns(kwargs: dict) -> dict:
    """An expectation's kwargs with the columns it names as the lake names them (``jobs.config.delta_name``:
    a suite written against the source's ``mean radius`` checks bronze's ``mean_radius``)."""
    from jobs.config import delta_name

    out = dict(kwargs)
    for key in COLUMN_KWARGS:
        if isinstance(out.get(key), str):
            out[key] = delta_name(out[key])
    for key in ("column_list", "column_set"):
        if isinstance(out.get(key), list):
            out[key] = [delta_name(c) if isinstance(c, str) else c for c in out[key]]
    return out


def _rules(expectations: list[dict], path: Path, overrides: dict[str, str]) -> list[Rule]:
    from great_expectations.expectations.registry import get_expectation_impl

    rules = []
    for i, exp in enumerate(expectations):
        where = f"{path} expectation #{i}"
        exp_type, kwargs, meta = exp.get("type"), _lake_columns(exp.get("kwargs") or {}), exp.get("meta") or {}
        if exp.get("kwargs"):
            exp["kwargs"] = kwargs
        try:
            get_expectation_impl(exp_type)
        except Exception:
            raise SuiteError(f"{where}: unknown expectation type {exp_type!r}",
                             fix="use a type from the Great Expectations gallery, e.g. expect_column_values_to_not_be_null") from None  # fmt: skip
        name = meta.get("name") or default_name(exp_type, kwargs)
        if not _NAME.match(name):
            raise SuiteError(f"{where}: meta.name {name!r} must be snake_case (a-z, 0-9, _)",
                             fix="rename it: the name becomes a quarantine reason")  # fmt: skip
        policy = overrides.get(name, meta.get("policy", "warn"))
        if policy not in POLICIES:
            raise SuiteError(f"{where} ({name}): policy {policy!r} is not one of {', '.join(POLICIES)}",
                             fix="set meta.policy (or validate.policies) to warn, drop or fail")  # fmt: skip
        nested = [v for v in kwargs.get("value_set") or [] if not isinstance(v, str | int | float | bool | None)]
        if nested:
            raise SuiteError(f"{where} ({name}): value_set holds {nested[0]!r}, which is not one value: a set "
                             "expectation compares one string, number or boolean per row",
                             fix="remove the expectation (a nested column cannot be in a set) or list single values; "
                                 "`fulcrum suite init` skips nested columns")  # fmt: skip
        rule = Rule(name=name, type=exp_type, kwargs=kwargs, policy=policy)
        if policy == "drop" and not rule.row_level:
            raise SuiteError(f"{where} ({name}): policy drop needs a row-level expectation; {exp_type} is not one",
                             fix="use warn or fail for aggregate expectations")  # fmt: skip
        rules.append(rule)
    names = [r.name for r in rules]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SuiteError(f"{path}: expectation names repeat: {repeated}", fix="give each a distinct meta.name")
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise SuiteError(f"validate.policies names expectations the suite lacks: {unknown}; it has {names}",
                         fix="use the suite's meta.name values as the keys of validate.policies")  # fmt: skip
    return rules
