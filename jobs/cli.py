"""The ``fulcrum`` command: parses, builds config, calls a stage or runner, prints a summary.

Exit codes: 0 ok, 1 data failed a ``fail`` policy, 2 usage or config error, 3 runtime error.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from jobs.errors import EXIT_RUNTIME, EXIT_USAGE, FulcrumError
from jobs.stage import StageReport

app = typer.Typer(
    name="fulcrum",
    help="Validate, curate and oversample datasets on Spark + Delta; train with cross-validation on Ray.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
# Not a terminal (a log file, a scheduler, CI): tables at full width, never cut to 80 columns.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

ConfigArg = Annotated[Path, typer.Argument(help="pipeline YAML (see the README's config reference)")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override a config key: --set spark.shuffle_partitions=4")
]
MasterOpt = Annotated[str | None, typer.Option("--spark-master", help="e.g. spark://host:7077 (default: config)")]


def _pairs(overrides: list[str] | None) -> dict:
    """``--set KEY=VALUE`` items as {dotted key: YAML value}."""
    pairs = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set needs KEY=VALUE, got {item!r}")
        pairs[key] = yaml.safe_load(value)
    return pairs


def _load(config: Path, overrides: list[str] | None, master: str | None):
    from jobs.config import load_config

    pairs = _pairs(overrides)
    if master:
        pairs["spark.master"] = master
    return load_config(config, pairs)


def _stage(cfg, name: str, job, run_id: str | None = None) -> StageReport:
    """One stage as its own run: the run's engine log, the Spark session, a spinner while it runs."""
    from jobs.console import PROGRESS, run_log
    from jobs.lakehouse.ledger import new_run_id
    from jobs.lakehouse.session import build_spark
    from jobs.pipeline import flush_metrics

    run_id = run_id or new_run_id()
    run_log(cfg.reports_dir, run_id)
    spark = build_spark(cfg.spark)
    try:
        with PROGRESS.stage(cfg.dataset, name):
            return job(spark, cfg, run_id)
    finally:
        flush_metrics(spark, cfg, run_id)


def _spark(cfg):
    """The Spark session for a command that is not a run: the engines' output goes to <reports>/engine.log."""
    from jobs.console import ENGINE, ENGINE_LOG
    from jobs.lakehouse.session import build_spark

    ENGINE.use(Path(cfg.reports_dir) / ENGINE_LOG)
    return build_spark(cfg.spark)


def print_reports(dataset: str, reports: list[StageReport]) -> None:
    table = Table(title=f"{dataset}: stages", title_justify="left")
    for col in ("stage", "rows in", "rows out", "dropped", "seconds"):
        table.add_column(col, justify="left" if col == "stage" else "right", no_wrap=True)
    table.add_column("details", overflow="fold")
    for r in reports:
        scalars = {k: v for k, v in r.details.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        details = ", ".join(f"{k}={v}" for k, v in scalars.items())
        table.add_row(r.stage, f"{r.rows_in:,}", f"{r.rows_out:,}", f"{r.rows_removed:,}", f"{r.seconds:.1f}",
                      details or "-")  # fmt: skip
    out.print(table)


@app.command()
def samples(
    outdir: Annotated[Path, typer.Argument(help="folder to write the sample datasets into")],
    seed: Annotated[int, typer.Option(help="same seed, same files")] = 7,
) -> None:
    """Write the two sample datasets (cancer table, digits images) with injected defects.

    Example: fulcrum samples ./samples && fulcrum ingest ./samples/cancer/cancer.yaml
    """
    from jobs.samples import make_samples

    for path in make_samples(outdir, seed):
        out.print(f"wrote {path.parent}/ (config {path.name}, ground truth injections.jsonl)")


@app.command()
def ingest(config: ConfigArg, set_: SetOpt = None, spark_master: MasterOpt = None) -> None:
    """Read the source, assign deterministic sample ids, insert new rows into bronze.

    Example: fulcrum ingest samples/cancer/cancer.yaml --spark-master spark://127.0.0.1:7077
    """
    from jobs import ingest as stage

    cfg = _load(config, set_, spark_master)
    report = _stage(cfg, "ingest", stage.run)
    print_reports(cfg.dataset, [report])


def print_validation(report: StageReport) -> None:
    summary = report.details.get("summary", [])
    table = Table(title="expectations", title_justify="left")
    table.add_column("expectation", no_wrap=True, min_width=max((len(s["name"]) for s in summary), default=10))
    for col in ("policy", "success", "unexpected", "%"):
        table.add_column(col, justify="right" if col in ("unexpected", "%") else "left", no_wrap=True)
    table.add_column("observed", overflow="fold")
    for s in summary:
        pct = "" if s["unexpected_percent"] is None else f"{s['unexpected_percent']:.2f}"
        observed = (
            "" if s["observed_value"] is None or isinstance(s["observed_value"], list) else str(s["observed_value"])
        )
        mark = "[green]yes[/]" if s["success"] else ("[red]no[/]" if s["policy"] == "fail" else "[yellow]no[/]")
        table.add_row(s["name"], s["policy"], mark, "" if s["unexpected_count"] is None else f"{s['unexpected_count']:,}",
                      pct, observed[:30])  # fmt: skip
    out.print(table)


@app.command()
def validate(config: ConfigArg, set_: SetOpt = None, spark_master: MasterOpt = None) -> None:
    """Run the dataset's GX suite on bronze: report + Data Docs, quarantine `drop` failures, exit 1 on `fail`.

    Example: fulcrum validate samples/cancer/cancer.yaml --set validate.policies.diagnosis_canonical=drop
    """
    from jobs.errors import DataFailedError
    from jobs.validation import validate as stage

    cfg = _load(config, set_, spark_master)
    try:
        report = _stage(cfg, "validate", stage.run)
    except DataFailedError as exc:
        if getattr(exc, "report", None):
            print_validation(exc.report)
        raise
    print_validation(report)
    print_reports(cfg.dataset, [report])
    out.print(f"Data Docs: {cfg.reports_dir}/data_docs/index.html")


def print_curate(report: StageReport) -> None:
    """Rows through clean, dedup and split, then class counts per fold."""
    stages = report.details.get("stages", {})
    table = Table(title="curate", title_justify="left")
    for col in ("step", "rows in", "rows out", "quarantined", "seconds"):
        table.add_column(col, justify="left" if col in ("step", "quarantined") else "right", no_wrap=True)
    for name, s in stages.items():
        dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(s.get("dropped", {}).items())) or "-"
        table.add_row(name, f"{s['rows_in']:,}", f"{s['rows_out']:,}", dropped, f"{s['seconds']:.1f}")
    out.print(table)
    check = stages.get("dedup", {}).get("near_check")
    if check:
        from jobs.curation.near_images import describe

        out.print(describe(check), markup=False)
    counts = stages.get("split", {}).get("class_counts_per_fold", {})
    folds = sorted({int(f) for per in counts.values() for f in per})
    if counts:
        table = Table(title="class counts per fold (-1 = held-out test)", title_justify="left")
        table.add_column("class", no_wrap=True)
        for f in folds:
            table.add_column(str(f), justify="right")
        for cls in sorted(counts):
            table.add_row(cls, *[f"{counts[cls].get(str(f), 0):,}" for f in folds])
        out.print(table)


@app.command()
def curate(config: ConfigArg, set_: SetOpt = None, spark_master: MasterOpt = None) -> None:
    """Clean, deduplicate and split the validated rows into silver; quarantine what is dropped.

    Example: fulcrum curate samples/cancer/cancer.yaml --set split.folds=10
    """
    from jobs.curation import curate as stage

    cfg = _load(config, set_, spark_master)
    report = _stage(cfg, "curate", stage.run)
    print_curate(report)
    print_reports(cfg.dataset, [report])


def print_balance(report: StageReport) -> None:
    """Class counts of each fold's training set (f) and the final one, before -> after."""
    balance = report.details.get("balance")
    if not balance:
        return
    auto = report.details.get("auto")
    if auto:
        from jobs.balancing.auto import gain_text

        table = Table(title=f"oversample.method auto: candidates on the folds (mean {auto['metric']} ± std, "
                      "calibration)", title_justify="left")  # fmt: skip
        for col in ("candidate", auto["metric"], "± std", "vs none (± SE)", "Brier", "ECE", "training rows"):
            table.add_column(col, justify="left" if col == "candidate" else "right", no_wrap=True)
        for c in auto["candidates"]:
            mark = " (chosen)" if c["name"] == auto["chosen"] else ""
            table.add_row(c["name"] + mark, f"{c['mean']:.3f}", f"{c['std']:.3f}", gain_text(c.get("vs_none")),
                          f"{c['brier']:.4f}", f"{c['ece']:.4f}", f"{c['train_rows']:,}")  # fmt: skip
        out.print(table)
        out.print(f"chose {auto['chosen']}: {auto['reason']}")
    sets = list(balance["before"])
    table = Table(title=f"training sets: class counts before -> after ({report.details['method']})",
                  title_justify="left")  # fmt: skip
    table.add_column("class", no_wrap=True)
    for s in sets:
        table.add_column("final" if s == sets[-1] else f"fold {s}", justify="right", no_wrap=True)
    for cls in sorted(balance["before"][sets[0]]):
        table.add_row(cls, *[f"{balance['before'][s][cls]:,} -> {balance['after'][s][cls]:,}" for s in sets])
    out.print(table)
    nn = report.details.get("knn") or {}
    if nn.get("approximate_groups") and nn.get("recall_at_k") is not None:
        out.print(f"neighbours: approximate (HNSW or k-means cells) in {nn['approximate_groups']} (pool, class) "
                  f"groups, exact in {nn['exact_groups']}; recall@{nn['k']} against exact neighbours "
                  f"{nn['recall_at_k']:.3f} on {nn['sampled']} sampled synthetic rows")  # fmt: skip
    for fb in report.details.get("fallback", []):
        where = "the final model" if str(fb["pool"]) == sets[-1] else f"fold {fb['pool']}"
        out.print(f"[yellow]warning[/]: {fb['class']!r} has {fb['rows']} rows in the training part of {where}, "
                  f"fewer than k_neighbors + 1: oversampled at random there")  # fmt: skip


@app.command()
def oversample(config: ConfigArg, set_: SetOpt = None, spark_master: MasterOpt = None) -> None:
    """Balance each fold's training part (and the final one) from its own rows only; write gold.

    Example: fulcrum oversample samples/cancer/cancer.yaml --set oversample.undersample=0.5
    """
    from jobs.balancing import oversample as stage

    cfg = _load(config, set_, spark_master)
    report = _stage(cfg, "oversample", stage.run)
    print_balance(report)
    print_reports(cfg.dataset, [report])


@app.command()
def train(config: ConfigArg, set_: SetOpt = None, version: Annotated[int | None, typer.Option(
        help="gold version to train from (default: latest)")] = None) -> None:  # fmt: skip
    """Cross-validate on Ray from the gold table (runs `python -m training`, the entry point of `ray job submit`).

    Example: fulcrum train samples/cancer/cancer.yaml --set train.epochs=5
    """
    from jobs import launch as stage

    cfg = _load(config, set_, None)
    report = _stage(cfg, "train", lambda spark, c, run_id: stage.run(spark, c, run_id, version))
    print_train(report)
    print_reports(cfg.dataset, [report])
    out.print(f"report: {report.details['report_dir']}/cv.json (plots beside it)")


def print_audit(report: StageReport) -> None:
    """The out-of-fold models' CV (when they trained), then per class: rows, threshold, estimated noise rate,
    rows flagged; then the lowest-scored rows."""
    if report.details.get("cv"):
        from training.contract import print_summary

        print_summary(report.details["cv"], out)
    est = report.details["estimate"]
    flagged: dict[str, int] = {}
    for pair, n in report.details["pairs"].items():
        flagged[pair.split(" -> ")[0]] = flagged.get(pair.split(" -> ")[0], 0) + n
    table = Table(title=f"label audit ({report.details['method']}): confident learning over out-of-fold "
                  "predictions", title_justify="left")  # fmt: skip
    for col in ("given label", "rows", "threshold", "est. noise rate", "in label_issues"):
        table.add_column(col, justify="left" if col == "given label" else "right", no_wrap=True)
    for i, cls in enumerate(est["classes"]):
        table.add_row(cls, f"{est['counts'][i]:,}", f"{est['thresholds'][i]:.3f}", f"{est['noise_rate'][i]:.1%}",
                      f"{flagged.get(cls, 0):,}")  # fmt: skip
    out.print(table)
    applied = report.details.get("applied")
    verified = report.details.get("verified")
    if verified and verified["act"]:
        out.print(f"the verdicts measured before they acted ({verified['rows']:,} rows, {verified['seconds']:.0f} s): "
                  f"{verified['reason']}")  # fmt: skip
    if verified and not verified["act"]:  # the model was skilled enough; its verdicts, measured, were not
        out.print(f"[yellow]verdicts withheld[/] after measuring them on the folds ({verified['rows']:,} rows, "
                  f"{verified['seconds']:.0f} s): {verified['reason']}")  # fmt: skip
    elif report.details.get("abstained"):
        out.print(f"the audit abstained: {report.details['abstained']}")
    elif applied and applied.get("withheld"):
        out.print(f"[yellow]verdicts withheld[/]: {applied['withheld']}")
    elif applied and applied["policy"] != "report":
        test = f" ({applied['test_part']:,} of them in the test part)" if applied.get("test_part") else ""
        out.print(f"applied before oversampling ({applied['policy']}): {applied['dropped']:,} rows dropped, "
                  f"{applied['relabelled']:,} relabelled in silver{test}")  # fmt: skip
    elif applied:
        out.print("clean.label_issues is report: the verdicts are in label_issues, silver is unchanged")
    top = report.details["top"]
    if top:
        table = Table(title=f"most likely label errors (lowest {report.details['ranking']})", title_justify="left")
        for col in ("sample_id", "fold", "given", "suggested", "score"):
            table.add_column(col, justify="right" if col in ("fold", "score") else "left", no_wrap=True)
        for r in top[:10]:
            table.add_row(r["sample_id"], str(r["fold"]), r["given_class"], r["suggested_class"], f"{r['score']:.3f}")
        out.print(table)


@app.command()
def audit(
    config: ConfigArg,
    reset: Annotated[bool, typer.Option(help="forget earlier verdicts (rows dropped or relabelled because of them)")] = False,
    retrain: Annotated[bool, typer.Option(help="train the out-of-fold models (--no-retrain: judge the last "
                                          "predictions again, e.g. with another audit.method)")] = True,
    set_: SetOpt = None,
    spark_master: MasterOpt = None,
) -> None:
    """Find likely label errors in silver (confident learning on out-of-fold predictions of models trained on
    its real rows); write label_issues and apply the verdicts to silver as clean.label_issues says.

    Then `fulcrum oversample` and `fulcrum train` build and train gold without them (as `fulcrum run` does).

    Example: fulcrum audit samples/cancer/cancer.yaml --set audit.method=prune_by_class
    """
    from jobs.analysis import audit as stage
    from jobs.lakehouse.ledger import new_run_id

    cfg = _load(config, set_, spark_master)
    run_id = new_run_id()
    report = _stage(cfg, "audit", lambda spark, c, r: stage.run(spark, c, r, reset, retrain), run_id)
    print_audit(report)
    print_reports(cfg.dataset, [report])
    out.print(f"report: {cfg.reports_dir}/{run_id}/audit.json (audit.png beside it)")


def print_tradeoff(report: StageReport) -> None:
    """The learning curves as a table (metric mean ± std per level and fraction), then the conclusion."""
    from jobs.analysis.tradeoff import NAMES

    curves = report.details["curves"]
    metric = report.details["conclusion"]["metric"]
    table = Table(title=f"quality vs quantity: validation {metric} (mean ± std over folds)", title_justify="left")
    fractions = sorted({p["fraction"] for pts in curves.values() for p in pts})
    table.add_column("level", no_wrap=True)
    for f in fractions:
        table.add_column(f"{f:.0%} of rows", justify="right", no_wrap=True)
    for level, pts in curves.items():
        by = {p["fraction"]: p for p in pts}
        table.add_row(NAMES[level], *[f"{by[f]['mean']:.3f} ± {by[f]['std']:.3f} ({by[f]['rows']:,.0f})"
                                      if f in by else "" for f in fractions])  # fmt: skip
    out.print(table)
    for line in report.details["conclusion"]["text"]:
        out.print(escape(line))
    for level, why in report.details["left_out"].items():
        out.print(f"[yellow]{level} left out:[/] {escape(why)}")


@app.command()
def tradeoff(
    config: ConfigArg,
    set_: SetOpt = None,
    spark_master: MasterOpt = None,
) -> None:
    """Cross-validate over data fractions × quality levels on the same folds; draw the learning curves.

    Levels: raw (validated only), clean (+ cleaning and dedup), audited (+ label audit),
    oversampled (+ oversampling). Needs a finished run (gold; label_issues for audited).
    Writes <reports>/<run_id>/tradeoff.html, tradeoff.png and tradeoff.json.

    Example: fulcrum tradeoff samples/cancer/cancer.yaml --set tradeoff.fractions=[0.25,0.5,1]
    """
    from jobs.analysis import tradeoff as stage

    cfg = _load(config, set_, spark_master)
    report = _stage(cfg, "tradeoff", stage.run)
    print_tradeoff(report)
    print_reports(cfg.dataset, [report])
    out.print(f"report: {report.details['html']} (tradeoff.png and tradeoff.json beside it)")


def print_train(report: StageReport) -> None:
    """The cross-validation's table: per fold, mean ± std, the final model on the test part (and the search)."""
    from training.contract import print_summary

    if report.details.get("summary"):
        print_summary(report.details["summary"], out)


def print_stage(report: StageReport) -> None:
    """A stage's own tables (expectations, curate steps and folds, class balance, audit, CV), where it has them."""
    printer = {"validate": print_validation, "curate": print_curate, "oversample": print_balance,
               "audit": print_audit, "train": print_train, "tradeoff": print_tradeoff}.get(report.stage)  # fmt: skip
    if printer:
        printer(report)


@app.command("run")
def run_(
    config: ConfigArg,
    from_: Annotated[str | None, typer.Option("--from", help="first stage (default: ingest)")] = None,
    until: Annotated[str | None, typer.Option(help="last stage (default: train)")] = None,
    run_id: Annotated[str | None, typer.Option(help="id for this run (default: new); a scheduler passes its own")] = None,
    set_: SetOpt = None,
    spark_master: MasterOpt = None,
) -> None:
    """The whole pipeline, ingest -> validate -> curate -> audit -> oversample -> train, or the stages --from/--until.

    Re-running after a crash finishes the work without duplicating rows; `fulcrum runs` shows every
    attempt. Ends with a summary table and the HTML run report.

    Example: fulcrum run samples/cancer/cancer.yaml --from curate --until oversample
    """
    from jobs.console import run_log
    from jobs.lakehouse.ledger import new_run_id
    from jobs.lakehouse.session import build_spark
    from jobs.pipeline import iter_pipeline, select_stages
    from jobs.report import write_report

    cfg = _load(config, set_, spark_master)
    stages = select_stages(from_, until)
    run_id = run_id or new_run_id()
    run_log(cfg.reports_dir, run_id)
    spark = build_spark(cfg.spark)
    reports: list[StageReport] = []
    try:
        for report in iter_pipeline(spark, cfg, run_id, stages):
            reports.append(report)
            print_stage(report)
    finally:
        print_reports(f"{cfg.dataset} (run {run_id})", reports)
        try:
            out.print(f"report: {write_report(spark, cfg, run_id)}")
        except Exception as exc:  # never hide the stage's own error behind the report's
            logging.getLogger(__name__).warning("could not write the run report: %s", exc)


@app.command()
def report(
    config: ConfigArg,
    run_id: Annotated[str | None, typer.Argument(help="the run (default: the newest; `fulcrum runs` lists them)")] = None,
    set_: SetOpt = None,
) -> None:
    """Write one run's self-contained HTML report: stages, validation, quarantine, duplicates, balance, CV.

    Example: fulcrum report samples/cancer/cancer.yaml 20261123T101500Z-1a2b3c4d
    """
    from jobs.report import write_report

    cfg = _load(config, set_, None)
    out.print(f"report: {write_report(lambda: _spark(cfg), cfg, run_id)}")


suite_app = typer.Typer(help="Great Expectations suites: suggest a starter suite from the data.", no_args_is_help=True)
app.add_typer(suite_app, name="suite")


@suite_app.command("init")
def suite_init(
    config: ConfigArg,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="where to write (default: <dataset>.suite.json beside the config)")
    ] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
    set_: SetOpt = None,
) -> None:
    """Profile bronze and write a starter GX suite with policies, for a person to edit.

    Example: fulcrum suite init samples/cancer/cancer.yaml --out expectations/cancer.json --force
    """
    from jobs.validation.profile import init_suite, range_rules

    cfg = _load(config, set_, None)
    target = out_path or config.parent / f"{cfg.dataset}.suite.json"
    path, count = init_suite(_spark(cfg), cfg, target, force)
    out.print(f"wrote {path} ({count} expectations); review it, then set `suite: {path.name}` in the config")
    rules = range_rules(json.loads(path.read_text()))
    if rules:
        out.print("number ranges from " + ", ".join(f"{rule} ({n})" for rule, n in rules.items())
                  + "; each check says which in meta.range_from (README: how `suite init` chooses a number's range)")


@app.command()
def runs(
    config: ConfigArg,
    limit: Annotated[int, typer.Option(help="rows to show")] = 20,
    set_: SetOpt = None,
) -> None:
    """Show the run ledger (the dataset's `runs` Delta table), newest first.

    Example: fulcrum runs samples/cancer/cancer.yaml --limit 5
    """
    from jobs.lakehouse import tables
    from jobs.lakehouse.ledger import history

    cfg = _load(config, set_, None)
    df = history(_spark(cfg), tables.Lake(cfg.lake_dir))
    if df is None:
        out.print(f"no runs recorded yet under {cfg.lake_dir}")
        return
    table = Table(title=f"{cfg.dataset}: runs", title_justify="left")
    for col in ("run id", "stage", "status", "started (UTC)", "seconds", "outputs", "error"):
        table.add_column(col)
    for row in df.limit(limit).collect():
        outputs = ", ".join(f"{o['name']}@v{o['version']}" for o in row["outputs"] or [])
        error = (row["error"] or "").splitlines()[0][:80] if row["error"] else ""
        table.add_row(row["run_id"], row["stage"], row["status"], f"{row['started_at']:%Y-%m-%d %H:%M:%S}",
                      f"{row['seconds']:.1f}", outputs, error)  # fmt: skip
    out.print(table)


DEFAULT_METRICS = ["rows_read", "rows", "quarantine_rate", "duplicate_rate", "silver_rows", "label_issue_rate",
                   "class_share.*", "batch.class_share.*"]  # fmt: skip


@app.command()
def metrics(
    config: ConfigArg,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="metric name or glob (repeatable), e.g. "
                                                     "'null_fraction.*'; default: the table-level ones")] = None,
    limit: Annotated[int, typer.Option(help="latest runs to show")] = 8,
    set_: SetOpt = None,
) -> None:
    """Show the metric history (the dataset's `metrics` Delta table): one row per metric, one column per run, the
    anomalies marked (yellow: warn, red: fail) and listed with the check that fired.

    Example: fulcrum metrics samples/cancer/cancer.yaml --metric 'null_fraction.*' --metric rows_read
    """
    from jobs.lakehouse import metrics as history
    from jobs.lakehouse import tables

    cfg = _load(config, set_, None)
    rows = history.load(lambda: _spark(cfg), tables.Lake(cfg.lake_dir), metric or DEFAULT_METRICS)
    if not rows:
        out.print(f"no metrics recorded under {cfg.lake_dir} yet" + (f" matching {metric}" if metric else ""))
        return
    runs, table = history.by_run(rows)
    runs = runs[-limit:]
    view = Table(title=f"{cfg.dataset}: metric history (oldest run first; ! = anomaly)", title_justify="left")
    view.add_column("metric", no_wrap=True)
    for run in runs:
        view.add_column(run, justify="right", no_wrap=True)
    flagged = []
    for name in sorted(table):
        cells = []
        for run in runs:
            r = table[name].get(run)
            if r is None:
                cells.append("")
                continue
            text = f"{r['value']:,.4g}"
            if r["anomaly"]:
                flagged.append(r)
                text = f"[{'red' if r['anomaly'].startswith('fail') else 'yellow'}]{text} ![/]"
            cells.append(text)
        view.add_row(name, *cells)
    out.print(view)
    for r in flagged:
        out.print(f"{r['run_id']} {r['stage']} {r['metric']}: {escape(r['anomaly'])}")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the samples and their lake")] = Path("demo-out"),
    seed: Annotated[int, typer.Option(help="sample seed")] = 7,
    spark_master: MasterOpt = None,
    epochs: Annotated[int | None, typer.Option(help="cap training epochs per fold (default: the samples' configs)")] = None,
    set_: SetOpt = None,
) -> None:
    """Build both sample datasets and run every stage on each, training included, with a summary per stage.

    Example: fulcrum demo --out ./demo-out --epochs 2 --set split.folds=3
    """
    from jobs.pipeline import demo as run_demo

    overrides = _pairs(set_)
    if epochs:
        overrides["train.epochs"] = epochs
    for dataset, reports, html in run_demo(out_dir, seed, spark_master, overrides):
        for report in reports:
            print_stage(report)
        print_reports(dataset, reports)
        out.print(f"report: {html}")
    out.print(f"lake: {out_dir.resolve() / 'lake'}")


class _EngineHandler(logging.Handler):
    """Other libraries' log records (py4j, GX, pandas' warnings...) go to the engine log, not the terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        from jobs.console import ENGINE

        try:
            ENGINE.write(f"{record.levelname} {record.name}: {record.getMessage()}")
        except Exception:  # never let a log line break a run
            self.handleError(record)


class _JsonHandler(logging.Handler):
    """fulcrum's own log lines as JSON objects on stderr (``--log-format json``)."""

    def emit(self, record: logging.LogRecord) -> None:
        import json

        sys.stderr.write(json.dumps({"event": "log", "level": record.levelname, "logger": record.name,
                                     "time": round(record.created, 3), "message": record.getMessage()}) + "\n")  # fmt: skip
        sys.stderr.flush()


def _configure_logging(log_format: str = "text") -> None:
    """fulcrum's lines (loggers ``jobs``, ``training``) on the terminal; every line, fulcrum's and the
    libraries' (py4j, GX, Python warnings...), in the engine log. Replaces only what it set up before."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EngineHandler)]:
        root.removeHandler(old)
    root.addHandler(_EngineHandler())
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    own = _JsonHandler() if log_format == "json" else RichHandler(console=err, show_path=False, show_time=False)
    own.setFormatter(logging.Formatter("%(message)s"))
    own.fulcrum_own = True
    for name in ("jobs", "training"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "fulcrum_own", False)]:
            logger.removeHandler(old)
        logger.addHandler(own)
        logger.setLevel(logging.INFO)
    logging.getLogger("py4j").setLevel(logging.ERROR)


@app.callback()
def _options(
    events: Annotated[str, typer.Option(help="each stage's event on stderr: json (one object per line) or none")] = "json",
    verbose: Annotated[bool, typer.Option(help="show the engines' own lines (Spark's log4j and Ivy, Ray's driver and "
                                          "workers, Tune) on the terminal as well as in the run's engine.log")] = False,
    log_format: Annotated[str, typer.Option(help="text: progress bars on a terminal, else one line per epoch; json: "
                                            "fulcrum's log lines and the progress as JSON objects on stderr")] = "text",
) -> None:
    import os

    from jobs.console import ENGINE, PROGRESS
    from jobs.errors import ConfigError
    from jobs.pipeline import setup_events

    if log_format not in ("text", "json"):
        raise ConfigError(f"--log-format {log_format!r}", fix="use text or json")
    setup_events(events, sys.stderr)
    _configure_logging(log_format)
    PROGRESS.configure("json" if log_format == "json" else "bars" if err.is_terminal else "lines", err)
    ENGINE.set_verbose(verbose)
    if verbose:  # the Ray side reads it (a child process, or a Ray job's environment)
        os.environ["FULCRUM_VERBOSE"] = "1"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command and map errors to exit codes."""
    _configure_logging()
    try:
        app(args=argv, prog_name="fulcrum", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return EXIT_RUNTIME
    except typer.TyperException as exc:  # typer's usage errors (it vendors click)
        exc.show(file=sys.stderr) if hasattr(exc, "show") else err.print(str(exc))
        return EXIT_USAGE
    except FulcrumError as exc:
        err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        if exc.fix:
            err.print(f"[bold]fix:[/] {escape(exc.fix)}", highlight=False)
        return exc.exit_code
    except Exception:
        err.print_exception(show_locals=False, max_frames=8)
        return EXIT_RUNTIME
    return 0


if __name__ == "__main__":
    sys.exit(main())
