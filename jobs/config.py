"""Typed, strict pipeline configuration: one YAML file per dataset pipeline.

Unknown keys and wrong types are errors that name the key, the value given and
what is allowed. Relative paths are resolved against the YAML file's folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobs.errors import ConfigError
from training.contract import Scored, TrainSettings

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
DELTA_FORBIDDEN = " ,;{}()\n\t="  # characters Delta refuses in a column name (without column mapping)
_FORBIDDEN_RUN = "[" + re.escape(DELTA_FORBIDDEN) + "]+"


def delta_name(name: str) -> str:
    """The column name fulcrum's tables use for a source column ``name``: each run of the characters Delta
    forbids in names becomes one ``_``, and none is left at either end (``mean radius`` → ``mean_radius``,
    ``Sepal Length (cm)`` → ``Sepal_Length_cm``); any other name is kept. Ingest renames the source's columns
    so, and every column a config or a suite names goes through it too, so either spelling works there."""
    if not re.search(_FORBIDDEN_RUN, name):
        return name
    inner = re.sub(f"^{_FORBIDDEN_RUN}|{_FORBIDDEN_RUN}$", "", name)
    return re.sub(_FORBIDDEN_RUN, "_", inner) or "_"


Column = Annotated[str, AfterValidator(delta_name)]  # a column as the lake names it (``delta_name``)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SourceConfig(Strict):
    path: str = Field(description="file, folder or glob of the source data (relative to the YAML)")
    format: Literal["csv", "parquet", "json", "delta"]
    options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="passed to Spark's reader, e.g. {header: true}"
    )
    version: int | None = Field(default=None, ge=0, description="Delta version to read (delta only)")

    @model_validator(mode="after")
    def _version_only_for_delta(self) -> SourceConfig:
        if self.version is not None and self.format != "delta":
            raise ValueError("source.version is only valid with format: delta")
        return self


class FeatureSpec(Strict):
    name: Column
    kind: Literal["numeric", "categorical"] = "numeric"


class ColumnsConfig(Strict):
    label: Column = Field(description="column holding the class label")
    id: Column | None = Field(default=None, description="column with a unique record key, else rows are hashed")
    features: list[FeatureSpec] = Field(default_factory=list)

    @field_validator("features", mode="before")
    @classmethod
    def _bare_names_are_numeric(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _distinct(self) -> ColumnsConfig:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature names repeat: {dupes}")
        if self.label in names:
            raise ValueError(f"label column {self.label!r} is also listed as a feature")
        return self


class ImagesConfig(Strict):
    root: str = Field(description="folder every manifest path resolves under; nothing outside is read")
    path_column: Column = "path"
    size: int = Field(default=32, ge=8, le=1024, description="training resolution (square)")
    channels: Literal[1, 3] = 3
    embed: bool = Field(default=False, description="store each image in gold as PNG bytes at the training size")


class AnomalyCheck(Strict):
    """One check over the metric history: which metrics (a glob over names), how they are judged, the policy."""

    metric: Column = Field(min_length=1, description="metric name or glob, e.g. rows_read, null_fraction.*, class_share.*")
    policy: Literal["warn", "fail"] = Field(default="warn", description="fail stops the run before its stage writes")
    change: float | None = Field(default=None, gt=0, description="fire when |value / previous run's - 1| exceeds this")
    z: float | None = Field(default=None, gt=0, description="fire when the robust z-score (median/MAD over the window) exceeds this")
    min_delta: float = Field(default=0.0, ge=0, description="absolute differences below this never fire")

    @model_validator(mode="after")
    def _one_test(self):
        if self.change is None and self.z is None:
            raise ValueError(f"anomaly check {self.metric!r} needs `change`, `z` or both")
        return self


def _default_checks() -> list[AnomalyCheck]:
    return [AnomalyCheck(metric="rows_read", change=0.4, z=5),
            AnomalyCheck(metric="batch.null_fraction.*", z=5, min_delta=0.05),
            AnomalyCheck(metric="null_fraction.*", z=5, min_delta=0.05),
            AnomalyCheck(metric="batch.class_share.*", z=5, min_delta=0.05),
            AnomalyCheck(metric="class_share.*", z=5, min_delta=0.05)]  # fmt: skip


class AnomaliesConfig(Strict):
    enabled: bool = Field(default=True, description="record metrics and check them against the history")
    min_runs: int = Field(default=3, ge=1, description="earlier runs needed before any check fires")
    window: int = Field(default=10, ge=2, description="the last N earlier runs the robust z-score is computed over")
    checks: list[AnomalyCheck] = Field(default_factory=_default_checks, description="replaces the defaults when set")


class ValidateConfig(Strict):
    policies: dict[str, Literal["warn", "drop", "fail"]] = Field(
        default_factory=dict, description="policy per expectation name (meta.name), overriding the suite"
    )
    data_docs: bool = Field(default=True, description="build the GX Data Docs site")
    partial_unexpected: int = Field(default=20, ge=0, le=1000, description="unexpected values kept per expectation")
    anomalies: AnomaliesConfig = Field(default_factory=AnomaliesConfig)


Imputation = Literal["drop", "median", "mean", "mode", "constant", "keep"]


class MissingConfig(Strict):
    default: Imputation = Field(default="drop", description="what to do with a null feature value")
    columns: dict[Column, Imputation] = Field(default_factory=dict, description="per-column policy")
    constants: dict[Column, Any] = Field(default_factory=dict, description="value per column for `constant`")


class OutliersConfig(Strict):
    method: Literal["iqr", "mad", "zscore", "none"] = "iqr"
    threshold: float | None = Field(default=None, gt=0, description="default 1.5 (iqr), 3.5 (mad), 3 (zscore)")
    action: Literal["clip", "drop", "flag"] = "flag"
    per_class: bool = Field(default=False, description="bounds per label value")
    columns: list[Column] | None = Field(default=None, description="numeric features to check (default: all)")

    @property
    def k(self) -> float:
        return self.threshold or {"iqr": 1.5, "mad": 3.5, "zscore": 3.0, "none": 0.0}[self.method]


class LabelsConfig(Strict):
    classes: list[str] | None = Field(default=None, description="the class map; other labels are quarantined")
    synonyms: dict[str, str] = Field(default_factory=dict,
                                     description="spelling -> class (matched with case, space, _ and - folded)")
    fuzzy: bool = Field(default=False, description="map an unknown label to its nearest class (edit distance)")
    fuzzy_distance: int = Field(default=2, ge=1, description="the most edits fuzzy mapping accepts")


class PiiConfig(Strict):
    columns: dict[Column, Literal["drop", "hash"]] = Field(default_factory=dict)
    salt_env: str = Field(default="FULCRUM_PII_SALT", description="environment variable holding the hash salt")


class CleanConfig(Strict):
    missing: MissingConfig = MissingConfig()
    outliers: OutliersConfig = OutliersConfig()
    labels: LabelsConfig = LabelsConfig()
    pii: PiiConfig = PiiConfig()
    label_issues: Literal["drop", "relabel", "report"] = Field(
        default="drop", description="the label audit's actionable verdicts, applied before oversampling in the same "
        "run and again by every later curate: quarantine the rows (label_issue), give them the suggested label, or "
        "only report them (drop: the better default in tests/bench/bench_label_policy.py)")  # fmt: skip


class AuditConfig(Strict):
    """Confident learning over out-of-fold predictions of silver's real rows (Northcutt et al., JAIR 2021),
    before oversampling."""

    enabled: bool = Field(default=True, description="run the label audit in `fulcrum run` (it trains the folds once "
                          "more, on real rows only, before oversampling)")  # fmt: skip

    method: Literal["prune_by_noise_rate", "prune_by_class", "confident_joint"] = Field(
        default="prune_by_noise_rate", description="which rows are flagged (see the README)")
    ranking: Literal["normalized_margin", "self_confidence"] = Field(
        default="normalized_margin", description="the score of a flagged row (lower: more likely wrong)")  # fmt: skip
    min_skill: float = Field(default=0.5, ge=0, le=1, description="the audit abstains (reports, never acts) unless "
                             "the out-of-fold model's balanced accuracy is this share of the way from chance to perfect")  # fmt: skip
    verify: bool = Field(default=True, description="before the verdicts act, measure them on the folds: every fold "
                         "trained on the labels as given and with the verdicts applied (one engine run); they are "
                         "withheld when they clearly make the folds worse")  # fmt: skip
    tolerance: float = Field(default=0.01, ge=0, le=1, description="verify: the verdicts are withheld when the mean "
                             "paired difference of oversample.metric is below -tolerance and two standard errors "
                             "below zero")  # fmt: skip
    large_share: float = Field(default=0.2, ge=0, le=1, description="verify: verdicts that change more than this "
                               "share of the folds' rows act only when they raise the folds' mean paired "
                               "oversample.metric by more than tolerance (not harming is not enough evidence for a "
                               "change that large)")  # fmt: skip
    members: Annotated[int, Field(ge=1, le=16)] | Literal["auto"] = Field(
        default="auto", description="models per fold trained in the audit's one pass from different initial weights; "
        "their mean probabilities are judged (verdicts less bound to one random start). auto: 3 for tables (an MLP's epochs "
        "cost little beside the run's fixed cost), 1 for images (every member multiplies the epochs' cost)")  # fmt: skip
    test_part: bool = Field(default=True, description="judge the test part too: its rows scored by a model trained on "
                            "every other real row (never on them) and their verdicts applied like the folds' rows, so "
                            "the final model's test score is measured on labels audited as the CV's are")  # fmt: skip

    def members_for(self, kind: str) -> int:
        """The models per fold: ``members``, or for ``auto`` 3 on tables and 1 on images."""
        return self.members if self.members != "auto" else (1 if kind == "images" else 3)


class VerifyConfig(Strict):
    """Images: how a candidate pair of near duplicates is confirmed (see the README, "Image near duplicates")."""

    measure: Literal["ncc", "phash"] = Field(
        default="ncc", description="ncc: normalised cross-correlation of the 32 px grayscale thumbnails, the best of "
        "every shift up to max_shift px; phash: the pHash distance alone (dedup.near.hamming), the path before ncc")  # fmt: skip
    threshold: Annotated[float, Field(ge=-1, le=1)] | Literal["auto"] = Field(
        default="auto", description="the NCC a pair needs; auto: 1 − d/ratio, d the distance (1 − NCC) of the "
        "closest 0.1 % of random pairs of this table")  # fmt: skip
    ratio: float = Field(default=9.0, gt=1, description="auto: how many times closer than the closest 0.1 % of "
                         "random pairs a copy must be")  # fmt: skip
    floor: float = Field(default=0.9, ge=0, le=1, description="auto never goes below this NCC")
    max_shift: int = Field(default=2, ge=0, le=6, description="shifts tried, in thumbnail pixels (each way)")
    bucket_rows: int = Field(default=3072, ge=64, description="images compared all-pairs at once; up to this many "
                             "images (after exact copies) the search is exhaustive")  # fmt: skip
    tables: int = Field(default=8, ge=1, le=32, description="random projections that cut larger tables into buckets")
    sample: int = Field(default=400, ge=50, description="images drawn (seeded) for the random-pair self-check")
    max_random_share: float = Field(default=0.001, ge=0, le=1, description="warn when the threshold accepts more "
                                    "than this share of random pairs")  # fmt: skip


class NearDupConfig(Strict):
    enabled: bool = True
    tolerance: float = Field(default=0.05, gt=0, description="tabular: max difference per feature, in its stdevs")
    hamming: int = Field(default=6, ge=0, le=15, description="images: max differing bits of the 64-bit pHash")
    grids: int = Field(
        default=8, ge=1, le=64, description="tabular: offset grids; a true pair is missed by all with p < 0.4^grids"
    )
    action: Literal["remove", "keep"] = Field(default="remove", description="keep: rows stay, sharing a dup_group")
    conflicts: Literal["per_label", "group"] = Field(
        default="per_label", description="a near-duplicate group whose labels disagree: one survivor per label "
        "(dedup.conflicts judges only exact copies), or the whole group judged by dedup.conflicts")  # fmt: skip
    verify: VerifyConfig = VerifyConfig()


class ExactDupConfig(Strict):
    enabled: bool = True
    columns: list[Column] | None = Field(default=None, description="identity columns: rows equal on these are one record "
                                      "(tabular; default: every feature)")  # fmt: skip
    chance: Literal["auto", "ignore"] = Field(
        default="auto", description="auto: when distinct rows are expected to share every feature value by chance, "
        "do not deduplicate on the features alone (tabular)")  # fmt: skip


class DedupConfig(Strict):
    exact: ExactDupConfig = ExactDupConfig()
    near: NearDupConfig = NearDupConfig()
    conflicts: Literal["quarantine", "majority", "keep"] = Field(
        default="quarantine", description="a duplicate group whose labels disagree: quarantined whole, the majority "
        "label's survivor kept (a tie is quarantined), or one survivor kept per label")  # fmt: skip

    @field_validator("exact", mode="before")
    @classmethod
    def _exact_as_bool(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


class SplitConfig(Strict):
    folds: int = Field(default=5, ge=2, le=100)
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0, description="held-out rows (fold = -1), per class")


RESAMPLERS = ("random", "smote", "adasyn", "smotenc", "undersample")
BALANCERS = ("none", "class_weight", *RESAMPLERS)


class OversampleConfig(Strict):
    method: Literal["auto", "random", "smote", "adasyn", "smotenc", "undersample", "none"] = Field(
        default="auto", description="how minority classes grow (undersample: only cut the larger classes; auto: "
        "measure the candidates on the split's folds and keep the best)")  # fmt: skip
    candidates: list[Literal["none", "class_weight", "random", "smote", "adasyn", "smotenc", "undersample"]] | None = Field(
        default=None, description="auto: what is compared (none is always; default: none, class_weight, random and, "
        "for tables, smote, or smotenc with categorical features)")  # fmt: skip
    metric: Scored = Field(default="macro_f1", description="auto: the cross-validation metric that picks")
    tolerance: float = Field(default=0.01, ge=0, le=1, description="auto: candidates within this of the best mean "
                             "metric are tied; the lowest Brier score among them wins (then the simplest)")  # fmt: skip
    target_ratio: float = Field(default=1.0, gt=0, le=1, description="each class up to this x the largest one")
    undersample: float | None = Field(
        default=None, gt=0, le=1,
        description="first cut every class to at most smallest / this (imbalanced-learn's sampling_strategy)",
    )  # fmt: skip
    k_neighbors: int = Field(default=5, ge=1, le=100, description="neighbours for smote, adasyn, smotenc")
    bucket_rows: int = Field(default=250_000, ge=16, description="a (pool, class) group up to this many rows is one "
                             "bucket (one task); a larger one is cut into k-means cells of about this size")
    knn_exact_rows: int = Field(default=20_000, ge=2, description="exact k-NN in a bucket of up to this many rows; "
                                "an HNSW graph above (its recall@k is measured in the stage report)")
    knn_probes: int = Field(default=2, ge=1, le=8, description="a row of a cut group is a neighbour candidate in its "
                            "this-many nearest cells (a query only in its nearest)")

    @property
    def interpolates(self) -> bool:
        return self.method in ("smote", "adasyn", "smotenc")

    @property
    def undersample_ratio(self) -> float | None:
        return 1.0 if self.method == "undersample" and self.undersample is None else self.undersample


class TradeoffConfig(Strict):
    """`fulcrum tradeoff`: cross-validation over data fractions × quality levels, on the same folds."""

    levels: list[Literal["raw", "clean", "audited", "oversampled"]] = Field(
        default_factory=lambda: ["raw", "clean", "audited", "oversampled"],
        description="quality levels to compare (see the README: how each level's training rows are chosen)")
    fractions: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0],
                                   description="fractions of each fold's training rows, sampled by duplicate group")
    folds: int | None = Field(default=None, ge=2, description="train the first N folds of the split (default: all)")
    epochs: int | None = Field(default=None, ge=1, description="epochs per training (default: train.epochs)")
    metric: Scored = Field(default="macro_f1", description="the curves' metric")

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"levels must be distinct and not empty, got {v}")
        return [lv for lv in ("raw", "clean", "audited", "oversampled") if lv in v]  # the order of the pipeline

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if len(set(v)) < 2 or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"fractions need at least two distinct values in (0, 1], got {v}")
        return sorted(set(v))


class SparkConfig(Strict):
    master: str = "local[*]"
    app_name: str = "fulcrum"
    driver_memory: str = "2g"
    shuffle_partitions: int = Field(default=8, ge=1)
    jars: list[str] = Field(default_factory=list, description="local Delta jars for offline clusters")
    conf: dict[str, str] = Field(default_factory=dict, description="extra Spark conf")
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = "ERROR"
    ui: bool = False
    class_archive: bool = Field(default=True, description="the driver JVM maps the class archive the warm-up "
                                "wrote (`python -m jobs.lakehouse.session`): faster starts and first queries")


class RayConfig(Strict):
    address: str | None = Field(default=None, description="Ray cluster to join; RAY_ADDRESS wins")
    num_cpus: int | None = Field(default=None, ge=1, description="logical CPUs of a local instance")


class PipelineConfig(Strict):
    dataset: str = Field(pattern=_NAME, description="dataset name; its tables live in <lake_root>/<dataset>/")
    kind: Literal["tabular", "images"]
    lake_root: str = "./lake"
    seed: int = 42
    source: SourceConfig
    columns: ColumnsConfig
    images: ImagesConfig | None = None
    suite: str | None = Field(default=None, description="GX suite JSON (relative to the YAML)")
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    clean: CleanConfig = CleanConfig()
    dedup: DedupConfig = DedupConfig()
    split: SplitConfig = SplitConfig()
    oversample: OversampleConfig = OversampleConfig()
    train: TrainSettings = Field(default_factory=TrainSettings, description="the Ray side's settings "
                                 "(training.contract.TrainSettings; train.seed defaults to seed)")
    audit: AuditConfig = AuditConfig()
    tradeoff: TradeoffConfig = TradeoffConfig()
    spark: SparkConfig = SparkConfig()
    ray: RayConfig = RayConfig()
    base_dir: str = Field(default=".", exclude=True, description="set by the loader")

    @model_validator(mode="before")
    @classmethod
    def _train_seed_is_the_seed(cls, raw: Any) -> Any:
        """The training seed is the config's seed unless the train section sets its own."""
        if isinstance(raw, dict) and isinstance(raw.get("train", {}), dict) and "seed" not in raw.get("train", {}):
            raw = {**raw, "train": {**raw.get("train", {}), "seed": raw.get("seed", 42)}}
        return raw

    @model_validator(mode="after")
    def _images_section_matches_kind(self) -> PipelineConfig:
        if self.kind == "images" and self.images is None:
            raise ValueError("kind: images needs an images section (root, path_column, size, channels)")
        if self.kind == "tabular" and self.images is not None:
            raise ValueError("an images section is only valid with kind: images")
        if self.kind == "tabular" and not self.columns.features:
            raise ValueError("kind: tabular needs columns.features")
        if self.train.search and self.train.search.folds and self.train.search.folds > self.split.folds:
            raise ValueError(f"train.search.folds ({self.train.search.folds}) is more than split.folds "
                             f"({self.split.folds})")  # fmt: skip
        method = self.oversample.method
        kinds = {f.kind for f in self.columns.features}
        if self.kind == "images" and self.oversample.interpolates:
            raise ValueError(f"oversample.method {method} interpolates features; images are oversampled by "
                             "repetition with augmentation: use method random")  # fmt: skip
        if self.kind == "tabular" and method in ("smote", "adasyn") and "categorical" in kinds:
            raise ValueError(f"oversample.method {method} needs numeric features only; with categorical "
                             "features use method smotenc")  # fmt: skip
        if self.kind == "tabular" and method == "smotenc" and kinds != {"numeric", "categorical"}:
            raise ValueError("oversample.method smotenc needs numeric and categorical features; "
                             "with numeric features only use method smote")  # fmt: skip
        return self

    def resolve(self, path: str) -> str:
        """A path from this config: URIs as given, relative paths against the YAML's folder."""
        if _URI.match(path) or Path(path).is_absolute():
            return path
        return str((Path(self.base_dir) / path).resolve())

    @property
    def reports_dir(self) -> str:
        """Local folder for reports and Data Docs: beside the tables when the lake is local."""
        if _URI.match(self.lake_dir) and not self.lake_dir.startswith("file:"):
            return str(Path("fulcrum-reports").resolve() / self.dataset)
        return self.lake_dir.removeprefix("file:") + "/reports"

    @property
    def lake_dir(self) -> str:
        return self.resolve(self.lake_root).rstrip("/") + "/" + self.dataset

    @property
    def source_columns(self) -> list[str]:
        """Columns the source must have, in config order."""
        cols = [self.columns.id] if self.columns.id else []
        if self.images:
            cols.append(self.images.path_column)
        cols += [self.columns.label] + [f.name for f in self.columns.features]
        return list(dict.fromkeys(cols))


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load and validate a pipeline YAML; raise ConfigError naming every bad key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", fix="pass the path of a pipeline YAML")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}",
                          fix="correct the line it names (YAML indents with spaces, never tabs)") from None  # fmt: skip
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, got {type(raw).__name__}",
                          fix="start from a sample config (`fulcrum samples DIR`) or the README's config reference")  # fmt: skip
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    raw["base_dir"] = str(path.resolve().parent)
    return parse_config(raw, origin=str(path))


def parse_config(raw: dict[str, Any], origin: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [describe_error(err) for err in exc.errors()]
        raise ConfigError(
            f"{origin} is invalid:\n" + "\n".join(f"  - {line}" for line in lines),
            fix="correct the keys above (the README's config reference lists every key)",
        ) from None


def describe_error(err: dict[str, Any]) -> str:
    """One line per pydantic error: the dotted key, the value given, what is allowed."""
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        return f"{key}: unknown key; allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    given = err.get("input")
    shown = repr(given) if not isinstance(given, dict) else "a mapping"
    return f"{key}: {err['msg']} (got {shown})"


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = PipelineConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = next((f for k, f in model.model_fields.items() if part in (k, f.alias)), None)
        if field is None:
            return []
        model = _model_of(field.annotation)
    if model is None:
        return []
    return [f.alias or k for k, f in model.model_fields.items() if not f.exclude]


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot override {dotted}: {part} is not a mapping")
    node[leaf] = value
