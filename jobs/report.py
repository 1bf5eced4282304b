"""The run report: one self-contained HTML page per run (``<reports>/<run_id>/report.html``).

Everything comes from what the run left behind: its rows in the ``runs`` table, the stages'
JSON and PNG files under ``<reports>/<run_id>/``, and the quarantine table's rows stamped
with the run id. Plots and image thumbnails are embedded as data URIs, so the page can be
mailed or attached to a scheduler's task without the folder beside it.
"""

from __future__ import annotations

import base64
import io as bytes_io
import json
import logging
import os
from pathlib import Path

from jinja2 import Environment, select_autoescape
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.config import PipelineConfig
from jobs.errors import ConfigError
from jobs.lake import ledger, tables
from jobs.lake.ranks import rank_within
from training.files import UnsafePath, as_mode, safe_join

log = logging.getLogger(__name__)
METRICS = ("accuracy", "macro_f1", "roc_auc", "log_loss")
MAX_CLUSTERS = 8
MAX_MEMBERS = 6
THUMB = 48


def write_report(spark: SparkSession, cfg: PipelineConfig, run_id: str | None = None) -> Path:
    """Build the HTML report of ``run_id`` (default: the newest run) and return its path."""
    lake = tables.Lake(cfg.lake_dir)
    run_id = run_id or ledger.latest_run_id(spark, lake)
    attempts = ledger.history(spark, lake, run_id) if run_id else None
    rows = attempts.orderBy("started_at").collect() if attempts is not None else []
    if not rows:
        raise ConfigError(f"{cfg.dataset}: no run {run_id or ''} in {lake.path('runs')}".replace("  ", " "),
                          fix="`fulcrum runs CONFIG` lists the run ids")  # fmt: skip
    folder = Path(cfg.reports_dir) / run_id
    folder.mkdir(parents=True, exist_ok=True)
    context = {
        "dataset": cfg.dataset, "kind": cfg.kind, "run_id": run_id, "lake": cfg.lake_dir,
        "stages": [_attempt(r) for r in rows],
        "validation": _json(folder / "validation_summary.json"),
        "data_docs": _data_docs(cfg, folder),
        "quarantine": _quarantine(spark, lake, run_id),
        "clusters": _clusters(spark, lake, cfg, run_id),
        "curate": _json(folder / "curate.json"),
        "cv": _json(folder / "train" / "cv.json"),
        "audit": _json(folder / "audit.json"),
        "metrics": METRICS,
        "tensorboard": str(folder / "train" / "tensorboard") if (folder / "train" / "tensorboard").exists() else None,
        "plots": {name: _png(path) for name, path in (
            ("class counts per fold", folder / "folds.png"),
            ("class balance before / after oversampling, per fold", folder / "class_balance.png"),
            ("CV metrics per fold", folder / "train" / "fold_metrics.png"),
            ("learning curves", folder / "train" / "learning_curves.png"),
            ("confusion matrix (final model on the test rows)", folder / "train" / "confusion.png"),
            ("hyperparameter search: running mean CV metric per trial", folder / "train" / "search" / "search.png"),
            ("label audit: confident joint and noise matrix", folder / "audit.png"),
        ) if path.exists()},
    }  # fmt: skip
    env = Environment(autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v: f"{v:,}" if isinstance(v, int) else ("" if v is None else str(v))
    path = folder / "report.html"
    path.write_text(env.from_string(TEMPLATE).render(**context))
    log.info("report %s: %s", cfg.dataset, path)
    return path


def _attempt(row) -> dict:
    counts = dict(row["counts"] or {})
    return {
        "stage": row["stage"], "status": row["status"], "started": f"{row['started_at']:%Y-%m-%d %H:%M:%S}",
        "seconds": f"{row['seconds']:.1f}", "rows_in": counts.get("rows_in"), "rows_out": counts.get("rows_out"),
        "dropped": {k.removeprefix("dropped."): v for k, v in sorted(counts.items()) if k.startswith("dropped.")},
        "outputs": [f"{o['name']}@v{o['version']}" for o in row["outputs"] or []],
        "error": (row["error"] or "").strip(),
    }  # fmt: skip


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _data_docs(cfg: PipelineConfig, folder: Path) -> str | None:
    index = Path(cfg.reports_dir) / "data_docs" / "index.html"
    return os.path.relpath(index, folder) if index.exists() else None


def _quarantine(spark: SparkSession, lake: tables.Lake, run_id: str) -> list[dict]:
    """Quarantined rows of this run per stage and reason."""
    if not tables.exists(spark, lake.path("quarantine")):
        return []
    q = tables.read(spark, lake.path("quarantine")).where(F.col("run_id") == run_id)
    counts = (q.select("stage", F.explode("reasons").alias("reason")).groupBy("stage", "reason").count()
              .orderBy("stage", F.desc("count")).collect())  # fmt: skip
    return [{"stage": r["stage"], "reason": r["reason"], "rows": r["count"]} for r in counts]


def _clusters(spark: SparkSession, lake: tables.Lake, cfg: PipelineConfig, run_id: str) -> list[dict]:
    """The largest duplicate clusters this run removed: the kept row and the rows dropped as its copies."""
    if not tables.exists(spark, lake.path("quarantine")):
        return []
    q = tables.read(spark, lake.path("quarantine")).where((F.col("run_id") == run_id) & F.col("duplicate_of").isNotNull())
    top = (q.groupBy("duplicate_of").agg(F.count(F.lit(1)).alias("n"), F.first("reasons")[0].alias("reason"))
           .orderBy(F.desc("n"), "duplicate_of").limit(MAX_CLUSTERS).collect())  # fmt: skip
    if not top:
        return []
    survivors = [r["duplicate_of"] for r in top]
    path_col = cfg.images.path_column if cfg.images else None
    # At most MAX_MEMBERS rows of each cluster reach the driver, however large the cluster (ids are hex: their
    # first three digits cut a cluster into 4,096 ordered ranges, ranked on their own).
    members = q.where(F.col("duplicate_of").isin(survivors)).select("sample_id", "duplicate_of",
                                                                    *([path_col] if path_col else []))  # fmt: skip
    members = rank_within(members, ["duplicate_of"], F.conv(F.substring("sample_id", 1, 3), 16, 10).cast("long"),
                          [F.col("sample_id")], limit=F.lit(MAX_MEMBERS)).collect()  # fmt: skip
    kept_paths = {}
    if path_col:
        bronze = tables.read(spark, lake.path("bronze")).where(F.col("sample_id").isin(survivors))
        kept_paths = {r["sample_id"]: r[path_col] for r in bronze.select("sample_id", path_col).collect()}
    root = Path(cfg.resolve(cfg.images.root)) if cfg.images else None
    out = []
    for r in top:
        rows = sorted((m for m in members if m["duplicate_of"] == r["duplicate_of"]), key=lambda m: m["_rank"])
        out.append({
            "kept": r["duplicate_of"], "size": r["n"], "reason": r["reason"],
            "kept_thumb": _thumb(root, kept_paths.get(r["duplicate_of"])) if root else None,
            "dropped": [{"id": m["sample_id"], "thumb": _thumb(root, m[path_col]) if root else None} for m in rows],
        })  # fmt: skip
    return out


def _thumb(root: Path, rel: str | None) -> str | None:
    """A small PNG data URI of an image under the root (None when it is missing, unreadable or outside)."""
    from PIL import Image

    try:
        path = safe_join(str(root), rel)
    except UnsafePath:
        return None
    if not os.path.isfile(path):
        return None
    try:
        with Image.open(path) as im:
            im.thumbnail((THUMB, THUMB))
            buf = bytes_io.BytesIO()
            as_mode(im, "RGB").save(buf, format="PNG")
    except Exception:  # a corrupt file was quarantined for that reason; the page still renders
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>fulcrum run {{ run_id }}: {{ dataset }}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.failed{color:#b00;font-weight:bold}.succeeded{color:#080}
.no{color:#b00}.yes{color:#080}img.plot{max-width:100%;border:1px solid #eee}
.cluster{display:flex;gap:6px;align-items:center;margin:4px 0}.cluster img{image-rendering:pixelated;width:48px}
.kept{outline:2px solid #080}code{background:#f4f4f4;padding:0 3px}
</style></head><body>
<h1>fulcrum run <code>{{ run_id }}</code>: {{ dataset }} ({{ kind }})</h1>
<p>Lake: <code>{{ lake }}</code></p>

<h2 id="stages">Stages</h2>
<table><tr><th class="l">stage</th><th class="l">status</th><th class="l">started (UTC)</th><th>seconds</th>
<th>rows in</th><th>rows out</th><th class="l">dropped</th><th class="l">outputs</th></tr>
{% for s in stages %}
<tr><td class="l">{{ s.stage }}</td><td class="l {{ s.status }}">{{ s.status }}</td><td class="l">{{ s.started }}</td>
<td>{{ s.seconds }}</td><td>{{ s.rows_in|num }}</td><td>{{ s.rows_out|num }}</td>
<td class="l">{% for k, v in s.dropped.items() %}{{ k }} {{ v|num }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td class="l">{{ s.outputs|join(", ") }}</td></tr>
{% if s.error %}<tr><td></td><td class="l failed" colspan="7">{{ s.error }}</td></tr>{% endif %}
{% endfor %}
</table>

<h2 id="validation">Validation</h2>
{% if validation %}
<p>{{ validation.rows_in|num }} rows validated, {{ (validation.rows_in - validation.rows_out)|num }} quarantined.
{% if data_docs %}Great Expectations Data Docs: <a href="{{ data_docs }}">{{ data_docs }}</a>{% endif %}</p>
<table><tr><th class="l">expectation</th><th class="l">type</th><th class="l">policy</th><th class="l">success</th>
<th>unexpected</th><th>%</th></tr>
{% for e in validation.summary %}
<tr><td class="l">{{ e.name }}</td><td class="l">{{ e.type }}</td><td class="l">{{ e.policy }}</td>
<td class="l {{ 'yes' if e.success else 'no' }}">{{ 'yes' if e.success else 'no' }}</td>
<td>{{ e.unexpected_count|num }}</td><td>{{ '%.2f'|format(e.unexpected_percent) if e.unexpected_percent is not none }}</td></tr>
{% endfor %}
</table>
{% else %}<p>Validation did not run in this run.</p>{% endif %}

<h2 id="quarantine">Quarantine reasons</h2>
{% if quarantine %}
<table><tr><th class="l">stage</th><th class="l">reason</th><th>rows</th></tr>
{% for q in quarantine %}<tr><td class="l">{{ q.stage }}</td><td class="l">{{ q.reason }}</td><td>{{ q.rows|num }}</td></tr>
{% endfor %}</table>
{% else %}<p>No rows were quarantined by this run.</p>{% endif %}

<h2 id="duplicates">Duplicate clusters</h2>
{% if clusters %}
<p>The largest clusters removed (outlined: the row kept).</p>
<table><tr><th class="l">kept</th><th>copies dropped</th><th class="l">reason</th><th class="l">rows</th></tr>
{% for c in clusters %}
<tr><td class="l"><code>{{ c.kept[:12] }}</code></td><td>{{ c.size }}</td><td class="l">{{ c.reason }}</td>
<td class="l"><div class="cluster">
{% if c.kept_thumb %}<img class="kept" src="{{ c.kept_thumb }}" alt="kept {{ c.kept }}">{% endif %}
{% for d in c.dropped %}{% if d.thumb %}<img src="{{ d.thumb }}" alt="dropped {{ d.id }}">{% else %}<code>{{ d.id[:12] }}</code>{% endif %}
{% endfor %}</div></td></tr>
{% endfor %}</table>
{% else %}<p>No duplicates were removed by this run.</p>{% endif %}

<h2 id="balance">Folds and class balance</h2>
{% for title, uri in plots.items() if 'fold' in title and 'CV' not in title or 'balance' in title %}
<figure><img class="plot" src="{{ uri }}" alt="{{ title }}"><figcaption>{{ title }}</figcaption></figure>
{% else %}<p>Curation and oversampling did not run in this run.</p>{% endfor %}

<h2 id="cv">Cross-validation</h2>
{% if cv %}
{% if cv.search %}{% set sr = cv.search %}{% set b = sr.best.config %}
<p id="search">Hyperparameter search first: {{ sr.trials }} {{ sr.algorithm }} trials on {{ sr.folds }} fold(s),
{{ sr.stopped_early }} stopped early by ASHA. Chosen: learning rate {{ '%.2e'|format(b.lr) }}, weight decay
{{ '%.2e'|format(b.weight_decay) }}, dropout {{ '%.2f'|format(b.dropout) }}, batch size {{ b.batch_size }}
(mean {{ sr.metric }} {{ '%.3f'|format(sr.best.score) }} in the search); the folds below use it.</p>
{% for title, uri in plots.items() if 'search' in title %}
<figure><img class="plot" src="{{ uri }}" alt="{{ title }}"><figcaption>{{ title }}</figcaption></figure>
{% endfor %}
{% endif %}
<p>Gold <code>{{ cv.table }}</code> v{{ cv.delta_version }}, {{ cv.folds }} folds ({{ cv.concurrent_folds }} at once).</p>
<table id="cv-table"><tr><th>fold</th><th>train rows</th><th>val rows</th><th>best epoch</th>
{% for m in metrics %}<th>{{ m }}</th>{% endfor %}</tr>
{% for f in cv.per_fold %}
<tr><td>{{ f.fold }}</td><td>{{ f.train_rows|num }}</td><td>{{ f.val_rows|num }}</td><td>{{ f.best_epoch }}</td>
{% for m in metrics %}<td>{{ '%.3f'|format(f[m]) }}</td>{% endfor %}</tr>
{% endfor %}
<tr><th>mean ± std</th><td></td><td></td><td></td>
{% for m in metrics %}<th>{{ '%.3f'|format(cv.mean[m]) }} ± {{ '%.3f'|format(cv.std[m]) }}</th>{% endfor %}</tr>
<tr><td>final → test</td><td>{{ cv.final.train_rows|num }}</td><td>{{ cv.final.test_rows|num }}</td><td>{{ cv.final.epochs }}</td>
{% for m in metrics %}<td>{{ '%.3f'|format(cv.final['test_' + m]) }}</td>{% endfor %}</tr>
</table>
{% for title, uri in plots.items() if 'CV' in title or 'learning' in title or 'confusion' in title %}
<figure><img class="plot" src="{{ uri }}" alt="{{ title }}"><figcaption>{{ title }}</figcaption></figure>
{% endfor %}
{% if tensorboard %}<p>Per-epoch metrics for TensorBoard: <code>tensorboard --logdir {{ tensorboard }}</code></p>{% endif %}
{% else %}<p>Training did not run in this run.</p>{% endif %}

<h2 id="audit">Label audit</h2>
{% if audit %}
{% set est = audit.estimate %}
<p>Confident learning ({{ audit.method }}, ranked by {{ audit.ranking }}) over {{ audit.rows_in|num }} out-of-fold
predictions: {{ audit.flagged|num }} rows flagged by this run, {{ audit.label_issues_rows|num }} in
<code>label_issues</code> v{{ audit.label_issues_version }}.</p>
<table id="audit-classes"><tr><th>given label</th><th>rows</th><th>threshold</th><th>est. noise rate</th></tr>
{% for c in est.classes %}
<tr><td class="l">{{ c }}</td><td>{{ est.counts[loop.index0]|num }}</td><td>{{ '%.3f'|format(est.thresholds[loop.index0]) }}</td>
<td>{{ '%.1f'|format(100 * est.noise_rate[loop.index0]) }} %</td></tr>
{% endfor %}</table>
{% if audit.top %}
<table id="audit-rows"><tr><th>sample_id</th><th>fold</th><th>given</th><th>suggested</th><th>score</th></tr>
{% for r in audit.top %}
<tr><td class="l"><code>{{ r.sample_id }}</code></td><td>{{ r.fold }}</td><td class="l">{{ r.given_class }}</td>
<td class="l">{{ r.suggested_class }}</td><td>{{ '%.3f'|format(r.score) }}</td></tr>
{% endfor %}</table>
{% endif %}
{% for title, uri in plots.items() if 'audit' in title %}
<figure><img class="plot" src="{{ uri }}" alt="{{ title }}"><figcaption>{{ title }}</figcaption></figure>
{% endfor %}
{% else %}<p>The label audit did not run in this run.</p>{% endif %}
</body></html>
"""
