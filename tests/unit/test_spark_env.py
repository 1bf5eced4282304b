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
