import pytest

from jobs.errors import EnvironmentSetupError
from jobs.lakehouse.session import java_version


def test_missing_java_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-such-jdk"))
    with pytest.raises(EnvironmentSetupError, match="Java was not found") as err:
        java_version()
    assert "openjdk-17-jre-headless" in str(err.value) and err.value.exit_code == 3


def test_installed_java_is_17_or_newer():
    assert java_version() >= 17


def test_the_class_archive_flag_goes_before_the_users_own_java_options(tmp_path):
    from jobs.lakehouse.session import java_options

    archive = tmp_path / "a.jsa"
    assert java_options(None, None) is None
    assert java_options("-Dx=1", None) == "-Dx=1"
    assert java_options(None, archive) == f"-XX:SharedArchiveFile={archive} -Xshare:auto"
    assert java_options("-Xshare:off", archive) == f"-XX:SharedArchiveFile={archive} -Xshare:auto -Xshare:off"
    assert java_options("-Dx=1", archive, dump=True) == f"-XX:ArchiveClassesAtExit={archive} -Dx=1"


def test_the_class_archive_is_keyed_by_sparks_jars_and_the_delta_jars(monkeypatch, tmp_path):
    """A changed, added or removed Spark jar, or other Delta jars, name another archive (the JVM would refuse
    the old one); the cache folder holds it."""
    from jobs.config import SparkConfig
    from jobs.lakehouse.session import class_archive

    jars = tmp_path / "spark" / "jars"
    jars.mkdir(parents=True)
    (jars / "a.jar").write_bytes(b"a")
    monkeypatch.setenv("SPARK_HOME", str(tmp_path / "spark"))
    monkeypatch.setenv("FULCRUM_CACHE", str(tmp_path / "cache"))
    cfg = SparkConfig(jars=["/x/delta-spark.jar"])
    first = class_archive(cfg)
    assert first.parent == tmp_path / "cache" and first.name.startswith("spark-classes-") and first.suffix == ".jsa"
    assert class_archive(cfg) == first
    (jars / "a.jar").write_bytes(b"ab")
    changed = class_archive(cfg)
    (jars / "b.jar").write_bytes(b"b")
    added = class_archive(cfg)
    other_delta = class_archive(SparkConfig(jars=["/y/delta-spark.jar"]))
    assert len({first, changed, added, other_delta}) == 4


def test_spark_submit_maps_the_class_archive_when_this_machine_has_one(monkeypatch, tmp_path):
    from jobs.lakehouse.session import class_archive, submit_args

    monkeypatch.setenv("FULCRUM_CACHE", str(tmp_path))
    assert not any("extraJavaOptions" in a for a in submit_args())
    class_archive().write_bytes(b"")
    assert f"spark.driver.extraJavaOptions=-XX:SharedArchiveFile={class_archive()}" in submit_args()
