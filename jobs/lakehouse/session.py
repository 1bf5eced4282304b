"""The Spark session: the only place one is made.

Delta Lake's jars come from Maven Central (or the mirror in ``spark.jars.ivySettings``) through Spark's
own package resolution (``configure_spark_with_delta_pip``) on the first start, which caches them in the
Ivy cache; fulcrum then records the resolved jar files (``jar_manifest()``) and later starts put those
files on ``spark.jars`` without asking any repository: a machine that has started once starts offline,
and faster. A cluster without internet access lists local copies in ``spark.jars``.

The driver JVM maps a class-data-sharing archive (``class_archive()``) when one was made: the warm-up
(``make warm``, ``python -m jobs.lakehouse.session``, the image build) runs a small Delta workload in a JVM
that dumps the classes it loaded (``-XX:ArchiveClassesAtExit``), and later starts map them instead of
loading, parsing and verifying Spark's and Delta's classes again (``-XX:SharedArchiveFile``). The archive
is keyed by the Java runtime, Spark's jars and the Delta package: a change to any of them makes the next
warm-up build a new one; a JVM that cannot use an archive ignores it (``-Xshare:auto``).

The JVM's own output (log4j, Ivy) goes to the run's engine log, not the terminal (``jobs.console``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from jobs.config import SparkConfig
from jobs.console import ENGINE, engine_output
from jobs.errors import EnvironmentSetupError

log = logging.getLogger(__name__)

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # Deletion vectors and column mapping stay off so delta-rs and Ray read every table alike.
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
    "spark.sql.session.timeZone": "UTC",
    # Catalyst's constraint propagation grows exponentially with the aliases of a wide projection (clean casts
    # and tags every feature): on a 31-feature table, curate's quarantine join with the audit's verdicts
    # spent minutes in `getAllValidConstraints` before running. Off, the optimiser infers no extra filters.
    "spark.sql.constraintPropagation.enabled": "false",
}
JAVA_FIX = (
    "install Java 17 (Debian/Ubuntu: `apt-get install -y openjdk-17-jre-headless`; "
    "macOS: `brew install openjdk@17`) or point JAVA_HOME at one"
)


def java_version() -> int:
    """Major version of the Java that Spark will launch; raise if there is none."""
    out = _java_identity(os.environ.get("JAVA_HOME"))
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise EnvironmentSetupError(f"could not read the Java version from: {out.strip()!r}", fix=JAVA_FIX)
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major


@functools.cache
def _java_identity(home: str | None) -> str:
    """``java -version``'s text for the Java under ``home`` (or on PATH)."""
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise EnvironmentSetupError("Java was not found: Spark needs a Java 17+ runtime", fix=JAVA_FIX)
    return f"{os.path.realpath(java)}\n" + subprocess.run([java, "-version"], capture_output=True, text=True,
                                                          check=False).stderr  # fmt: skip


def cache_dir() -> Path:
    """fulcrum's machine-wide cache (``FULCRUM_CACHE``, default ``~/.cache/fulcrum``)."""
    return Path(os.environ.get("FULCRUM_CACHE") or Path.home() / ".cache" / "fulcrum")


def under_spark_submit() -> bool:
    """True when ``spark-submit`` launched this interpreter (it hands pyspark its JVM's gateway port)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def delta_package() -> str:
    """The Maven coordinate of the Delta jar matching the installed delta-spark and pyspark."""
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    return configure_spark_with_delta_pip(SparkSession.Builder())._options["spark.jars.packages"]


def jar_manifest() -> Path:
    """Where the jar files a package resolution found are recorded (``FULCRUM_CACHE``, default
    ``~/.cache/fulcrum``): ``{"<maven coordinates>": ["/path/to.jar", ...]}``."""
    return cache_dir() / "spark-jars.json"


def cached_jars(packages: str) -> list[str] | None:
    """The jar files recorded for ``packages`` when every one of them is still on disk, else None."""
    try:
        jars = json.loads(jar_manifest().read_text()).get(packages)
    except (OSError, ValueError, AttributeError):
        return None
    if not jars or not all(os.path.isfile(j) for j in jars):
        return None
    return jars


def record_jars(packages: str, spark_jars: str) -> list[str]:
    """Record the local jar files Spark resolved for ``packages`` (its ``spark.jars`` after the start)."""
    from urllib.parse import unquote, urlparse

    jars = [unquote(urlparse(j).path) if j.startswith("file:") else j for j in spark_jars.split(",") if j]
    jars = [j for j in jars if os.path.isfile(j)]
    if not jars:
        return []
    path = jar_manifest()
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
        known = known if isinstance(known, dict) else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**known, packages: jars}, indent=1))
        tmp.replace(path)  # atomic: concurrent starts never read half a file
    except (OSError, ValueError) as exc:
        log.debug("could not record the resolved jars in %s: %s", path, exc)
    return jars


def submit_args() -> list[str]:
    """``spark-submit`` options and application file for fulcrum's CLI on a cluster.

    Delta's jars reach the driver and every executor through ``--packages`` (Spark resolves them
    from Maven Central, or from the mirror in ``spark.jars.ivySettings``, and ships them to the
    executors); the Delta session settings go as ``--conf``; executors run this interpreter (the same
    path in the container image on a real cluster). When this machine has a class archive, the driver
    (client mode: on this machine) maps it; a later ``--conf spark.driver.extraJavaOptions`` replaces
    that. Usage::

        spark-submit --master spark://HOST:7077 $(python -m jobs.lakehouse.session submit-args) run CONFIG --until oversample
    """

    args = ["--packages", delta_package()]
    conf = {**DELTA_CONF, "spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable}
    archive = class_archive()
    if archive.is_file() and " " not in str(archive):  # the driver (client mode, this machine) maps it
        conf["spark.driver.extraJavaOptions"] = f"-XX:SharedArchiveFile={archive}"
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    return [*args, str(Path(__file__).with_name("submit.py"))]


ARCHIVE_PREFIX = "spark-classes-"


def class_archive(cfg: SparkConfig | None = None) -> Path:
    """Where the driver JVM's class-data-sharing archive for this machine's Java, Spark jars and Delta jars
    lives (it may not exist yet): ``<cache>/spark-classes-<key>.jsa``. The key hashes ``java -version``, each
    of Spark's jars (name, size, modification time: what the JVM itself checks) and the Delta jars."""
    import pyspark

    cfg = cfg or SparkConfig()
    digest = hashlib.sha256(_java_identity(os.environ.get("JAVA_HOME")).encode())
    jars = Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent) / "jars"
    for jar in sorted(jars.glob("*.jar")):
        st = jar.stat()
        digest.update(f"{jar}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    digest.update("\n".join(cfg.jars or [delta_package()]).encode())
    return cache_dir() / f"{ARCHIVE_PREFIX}{digest.hexdigest()[:16]}.jsa"


def java_options(user: str | None, archive: Path | None, *, dump: bool = False) -> str | None:
    """The driver's ``spark.driver.extraJavaOptions``: the class archive's flag (map ``archive``, or with
    ``dump`` write it when the JVM exits) before the user's own options, which win where they overlap."""
    flag = None if archive is None else (f"-XX:ArchiveClassesAtExit={archive}" if dump
                                         else f"-XX:SharedArchiveFile={archive} -Xshare:auto")  # fmt: skip
    return " ".join(x for x in (flag, user) if x) or None


def build_spark(cfg: SparkConfig | None = None, master: str | None = None, *, dump_classes: Path | None = None):
    """Start (or join) the Spark session with Delta configured.

    Under ``spark-submit`` its ``--master`` and ``--packages`` are in force: the config's
    ``spark.master`` is not applied and the Delta jars must come from ``--packages`` or ``--jars``.
    The driver maps the class archive when ``spark.class_archive`` is on and the archive exists (it is
    not applied under ``spark-submit``, whose command line starts the JVM); ``dump_classes`` instead
    makes this JVM write one there when it exits (the warm-up's job).
    """
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    cfg = cfg or SparkConfig()
    major = java_version()
    if major < 17:
        raise EnvironmentSetupError(f"Java {major} found; Spark 4 needs Java 17 or newer", fix=JAVA_FIX)
    submitted = under_spark_submit()
    master = master or cfg.master
    if master.startswith("local") and not submitted:  # Python workers must be this interpreter
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.app_name)
    if submitted:
        log.info("launched by spark-submit: its --master is used (config spark.master %s ignored)", master)
    else:
        builder = builder.master(master)
    conf = {
        **DELTA_CONF,
        "spark.ui.enabled": str(cfg.ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.driver.memory": cfg.driver_memory,
        # Delta rebuilds table state with 50 tasks by default: ~10 s per write on a small machine.
        "spark.databricks.delta.snapshotPartitions": str(cfg.shuffle_partitions),
        **cfg.conf,
    }
    if not submitted:
        archive = dump_classes or (class_archive(cfg) if cfg.class_archive else None)
        options = java_options(cfg.conf.get("spark.driver.extraJavaOptions"),
                               archive if dump_classes or (archive and archive.is_file()) else None,
                               dump=dump_classes is not None)  # fmt: skip
        if options:
            conf["spark.driver.extraJavaOptions"] = options
    for key, value in conf.items():
        builder = builder.config(key, value)
    if cfg.jars:
        missing = [j for j in cfg.jars if "://" not in j and not os.path.exists(j)]
        if missing:
            raise EnvironmentSetupError(f"spark.jars lists files that do not exist: {missing}")
        builder = builder.config("spark.jars", ",".join(cfg.jars))
    resolve = None
    if not cfg.jars and not submitted:
        packages = delta_package()
        jars = cached_jars(packages)
        if jars:  # resolved once before: no repository is asked
            builder = builder.config("spark.jars", ",".join(jars))
        else:
            builder, resolve = configure_spark_with_delta_pip(builder), packages
    try:
        with engine_output("spark-jvm"):  # log4j and Ivy go to the engine log
            spark = builder.getOrCreate()
    except Exception as exc:  # py4j/pyspark raise bare exceptions when the JVM cannot start
        time.sleep(0.5)  # the pump thread's last lines
        said = "".join(ENGINE.recent).strip()
        raise EnvironmentSetupError(
            f"Spark could not start: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            + (f"\nthe JVM's last lines (all of them in {ENGINE.where()}):\n{said}" if said else ""),
            fix="the Delta jars are resolved from Maven Central (or spark.jars.ivySettings' mirror) on the first start "
            f"and recorded in {jar_manifest()}; later starts need no network. Warm once where the network is "
            "reachable (`make warm` or `python -m jobs.lakehouse.session`), or set spark.jars to local "
            "delta-spark_4.2_2.13 and delta-storage jars",
        ) from exc
    spark.sparkContext.setLogLevel(cfg.log_level)
    if resolve:
        jars = record_jars(resolve, spark.sparkContext.getConf().get("spark.jars", ""))
        log.debug("resolved %s: %d jars recorded in %s", resolve, len(jars), jar_manifest())
    if submitted:
        _require_delta(spark)
    log.info("spark %s on %s", spark.version, spark.sparkContext.master)
    return spark


def _require_delta(spark) -> None:
    from delta.tables import DeltaTable

    try:  # without the jar, py4j finds no class and the call fails
        DeltaTable.isDeltaTable(spark, "file:///nonexistent-fulcrum-probe")
    except Exception as exc:
        raise EnvironmentSetupError(
            "the Delta jars are not on this spark-submit's classpath",
            fix="pass `$(python -m jobs.lakehouse.session submit-args)` to spark-submit (it adds --packages "
            f"{delta_package()}), or --jars with local delta-spark and delta-storage jars",
        ) from exc


def warm(directory: str) -> str:
    """Start a session and round-trip a tiny Delta table: resolves and caches the jars. When this machine has
    no class archive yet, the session's JVM writes one as it exits, after a small workload of the operations
    the stages use (``_archive_workload``); it is moved into place only once the JVM has written it whole."""
    from importlib.metadata import version

    cfg = SparkConfig()
    target = class_archive(cfg)
    dump = None if target.is_file() else target.with_name(f"{target.stem}.{os.getpid()}.tmp")
    spark = build_spark(cfg, dump_classes=dump)
    path = os.path.join(directory, "warm")
    spark.range(3).write.format("delta").mode("overwrite").save(path)
    rows = spark.read.format("delta").load(path).count()
    said = f"spark {spark.version}, delta-spark {version('delta-spark')} ok ({rows} rows)"
    if dump is None:
        return f"{said}; class archive {target}"
    _archive_workload(spark, directory)
    written = _stop_jvm(spark) and dump.is_file() and dump.stat().st_size > 0
    if not written:
        dump.unlink(missing_ok=True)
        return f"{said}; no class archive (the JVM did not write one: Spark starts without it)"
    dump.replace(target)  # a new file: JVMs mapping an older archive keep theirs (never rewritten in place)
    for old in target.parent.glob(f"{ARCHIVE_PREFIX}*"):  # archives of other Java or Spark versions
        if old != target and not old.name.endswith(f".{os.getpid()}.tmp"):
            old.unlink(missing_ok=True)
    return f"{said}; class archive written to {target} ({target.stat().st_size / 2**20:.0f} MiB)"


def _archive_workload(spark, directory: str) -> None:
    """The kinds of queries the stages run, so that their classes are in the archive: Delta overwrite, append
    and merge, filters, aggregates with quantiles and distinct counts, windows, joins, observed metrics,
    Arrow collection, Python UDFs over Arrow, the table's history."""
    from delta.tables import DeltaTable
    from pyspark.sql import Observation, Window
    from pyspark.sql import functions as F

    path = os.path.join(directory, "archive-workload")
    df = spark.range(200).select(F.col("id"), (F.col("id") % 7).cast("string").alias("label"),
                                 (F.rand(1) * 10).alias("x"), F.sha2(F.col("id").cast("string"), 256).alias("h"))  # fmt: skip
    df.write.format("delta").mode("overwrite").save(path)
    df.limit(10).write.format("delta").mode("append").option("userMetadata", "{}").save(path)
    (DeltaTable.forPath(spark, path).alias("t").merge(df.limit(20).alias("s"), "t.id = s.id")
     .whenNotMatchedInsertAll().execute())  # fmt: skip
    seen = Observation("warm")
    read = spark.read.format("delta").load(path).where(F.col("x") > 1).observe(seen, F.count(F.lit(1)).alias("n"))
    read.groupBy("label").agg(F.count("*"), F.mean("x"), F.stddev("x"), F.approx_count_distinct("h"),
                              F.percentile_approx("x", [0.25, 0.5, 0.75])).collect()  # fmt: skip
    ranked = read.withColumn("r", F.row_number().over(Window.partitionBy("label").orderBy("x")))
    ranked.join(df.select("id", "h"), "id", "left_anti").count()
    read.mapInArrow(lambda batches: batches, read.schema).toArrow()
    DeltaTable.forPath(spark, path).history(1).collect()


def _stop_jvm(spark, timeout: float = 300) -> bool:
    """Stop the session and let its JVM exit (it exits when its stdin closes), waiting for it: a JVM that
    dumps a class archive writes it on the way out. True when the JVM ended."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    spark.stop()
    proc = getattr(gateway, "proc", None)
    if proc is None:
        return False
    gateway.shutdown()
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


if __name__ == "__main__":  # `python -m jobs.lakehouse.session`: warm the Delta jar cache; `... submit-args`: see above
    import shlex
    import tempfile

    if sys.argv[1:] == ["submit-args"]:
        print(shlex.join(submit_args()))
        sys.exit(0)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            print(warm(tmp))
        except EnvironmentSetupError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
