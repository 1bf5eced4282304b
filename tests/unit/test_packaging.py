"""The installed package, not the checkout: a wheel built in a temporary folder ships the suites."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_wheel_ships_the_suites_and_its_samples_validate(tmp_path):
    src = tmp_path / "src"  # a copy, so no build/ folder is left in (or taken from) the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("jobs", "training", "expectations"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    assert "Warning" not in build.stderr, build.stderr[-3000:]  # no deprecated or ambiguous packaging settings
    wheel = next((tmp_path / "dist").glob("fulcrum-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"expectations/cancer.json", "expectations/digits.json", "jobs/templates/report.html.j2"} <= set(names)
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    # From a folder outside the checkout, with the installed copy first on the path: the samples get their suites.
    probe = ("import jobs, json; from jobs.samples import make_samples; "
             "paths = make_samples('out');"
             "print(json.dumps([jobs.__file__] + [str(p.parent / (p.stem + '.suite.json')) for p in paths]))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(site)})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    module, *suites = __import__("json").loads(run.stdout.strip().splitlines()[-1])
    assert module.startswith(str(site))  # the wheel's code ran, not the checkout's
    for suite in suites:
        assert (tmp_path / suite).is_file(), suite
