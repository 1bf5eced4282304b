"""The Spark session: the only place one is made.

Delta Lake's jars come from Maven Central (or the mirror in ``spark.jars.ivySettings``) through Spark's
own package resolution (``configure_spark_with_delta_pip``) on the first start, which caches them in the
Ivy cache; fulcrum then records the resolved jar files (``jar_manifest()``) and later starts put those
files on ``spark.jars`` without asking any repository: a machine that has started once starts offline,
and faster. A cluster without internet access lists local copies in ``spark.jars``.

The JVM's own output (log4j, Ivy) goes to the run's engine log, not the terminal (``jobs.console``).
"""

from __future__ import annotations

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


def jar_manifest() -> Path:
    """Where the jar files a package resolution found are recorded (``FULCRUM_CACHE``, default
    ``~/.cache/fulcrum``): ``{"<maven coordinates>": ["/path/to.jar", ...]}``."""
    return Path(os.environ.get("FULCRUM_CACHE") or Path.home() / ".cache" / "fulcrum") / "spark-jars.json"


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
