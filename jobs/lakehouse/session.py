"""The Spark session: the only place one is made.

Delta Lake's jars come from Maven Central through Spark's own package resolution
(``configure_spark_with_delta_pip``), cached in the Ivy cache after the first start;
a cluster without internet access lists local copies in ``spark.jars``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from jobs.config import SparkConfig
from jobs.errors import EnvironmentSetupError

log = logging.getLogger(__name__)

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # Deletion vectors and column mapping stay off so delta-rs and Ray read every table alike.
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
    "spark.sql.session.timeZone": "UTC",
}
JAVA_FIX = (
    "install Java 17 (Debian/Ubuntu: `apt-get install -y openjdk-17-jre-headless`; "
    "macOS: `brew install openjdk@17`) or point JAVA_HOME at one"
)


def java_version() -> int:
    """Major version of the Java that Spark will launch; raise if there is none."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise EnvironmentSetupError("Java was not found: Spark needs a Java 17+ runtime", fix=JAVA_FIX)
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise EnvironmentSetupError(f"could not read the Java version from: {out.strip()!r}", fix=JAVA_FIX)
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major


def under_spark_submit() -> bool:
    """True when ``spark-submit`` launched this interpreter (it hands pyspark its JVM's gateway port)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def delta_package() -> str:
    """The Maven coordinate of the Delta jar matching the installed delta-spark and pyspark."""
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    return configure_spark_with_delta_pip(SparkSession.Builder())._options["spark.jars.packages"]


def submit_args() -> list[str]:
    """``spark-submit`` options and application file for fulcrum's CLI on a cluster.

    Delta's jars reach the driver and every executor through ``--packages`` (Spark resolves them
    from Maven Central, or from the mirror in ``spark.jars.ivySettings``, and ships them to the
    executors); the Delta session settings go as ``--conf``; executors run this interpreter (the same
    path in the container image on a real cluster). Usage::

        spark-submit --master spark://HOST:7077 $(python -m jobs.lakehouse.session submit-args) run CONFIG --until oversample
    """

    args = ["--packages", delta_package()]
    for key, value in {**DELTA_CONF, "spark.pyspark.python": sys.executable,
                       "spark.pyspark.driver.python": sys.executable}.items():  # fmt: skip
        args += ["--conf", f"{key}={value}"]
    return [*args, str(Path(__file__).with_name("submit.py"))]


def build_spark(cfg: SparkConfig | None = None, master: str | None = None):
    """Start (or join) the Spark session with Delta configured.

    Under ``spark-submit`` its ``--master`` and ``--packages`` are in force: the config's
    ``spark.master`` is not applied and the Delta jars must come from ``--packages`` or ``--jars``.
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
    for key, value in conf.items():
        builder = builder.config(key, value)
    if cfg.jars:
        missing = [j for j in cfg.jars if "://" not in j and not os.path.exists(j)]
        if missing:
            raise EnvironmentSetupError(f"spark.jars lists files that do not exist: {missing}")
        builder = builder.config("spark.jars", ",".join(cfg.jars))
    elif not submitted:
        builder = configure_spark_with_delta_pip(builder)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # py4j/pyspark raise bare exceptions when the JVM cannot start
        raise EnvironmentSetupError(
            f"Spark could not start: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            fix="the Delta jars are resolved from Maven Central on first start (cached in ~/.ivy2*); "
            "without network access set spark.jars to local delta-spark_4.2_2.13 and delta-storage jars",
        ) from exc
    spark.sparkContext.setLogLevel(cfg.log_level)
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
    """Start a session and round-trip a tiny Delta table: resolves and caches the jars."""
    spark = build_spark()
    path = os.path.join(directory, "warm")
    spark.range(3).write.format("delta").mode("overwrite").save(path)
    rows = spark.read.format("delta").load(path).count()
    from importlib.metadata import version

    return f"spark {spark.version}, delta-spark {version('delta-spark')} ok ({rows} rows)"


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
