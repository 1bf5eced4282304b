"""The import contract (pyproject.toml's [tool.importlinter]): which side may import what."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contract_is_kept():
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


def test_a_crossing_import_breaks_the_contract(tmp_path):
    """The same contract on a copy of the tree where jobs/ imports the Ray side's CV driver: broken."""
    for name in ("jobs", "training", "pyproject.toml"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, tmp_path / name)
    report = tmp_path / "jobs" / "report.py"
    report.write_text(report.read_text() + "\nfrom training import cv  # noqa: E402,F401\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "jobs/ imports only training.contract from training/ BROKEN" in done.stdout
    assert "jobs.report -> training.cv" in done.stdout


def test_the_contract_package_loads_neither_ray_nor_torch():
    code = ("import sys, training.contract, jobs.config; "
            "print(sorted(m for m in ('ray', 'torch', 'torchvision', 'pyspark') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
