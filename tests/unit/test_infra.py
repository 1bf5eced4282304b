"""Every recipe under infra/ is loaded or linted, and checked against the code it launches."""

import ast
import importlib.util
import json
import re
import shlex
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from jobs.cli import app
from jobs.lakehouse.session import DELTA_CONF, delta_package
from training.__main__ import parser as training_parser

INFRA = Path(__file__).resolve().parents[2] / "infra"
ROOT = INFRA.parent
COMMANDS = {c.name or c.callback.__name__ for c in app.registered_commands}


def test_cli_commands_the_recipes_call_exist():
    assert {"run", "report", "train", "runs"} <= COMMANDS


def test_spark_application_ships_the_installed_delta_jars_and_session():
    doc = yaml.safe_load((INFRA / "k8s" / "sparkapplication.yaml").read_text())
    assert doc["kind"] == "SparkApplication" and doc["apiVersion"].startswith("sparkoperator.k8s.io/")
    spec = doc["spec"]
    assert spec["sparkVersion"] == version("pyspark")
    assert delta_package() in spec["deps"]["packages"]  # the jar that matches the installed delta-spark
    for key, value in DELTA_CONF.items():
        assert spec["sparkConf"][key] == value
    assert spec["mainApplicationFile"].endswith("jobs/lakehouse/submit.py")
    assert spec["arguments"][0] in COMMANDS


def test_rayjob_runs_the_training_entry_point_with_valid_flags():
    doc = yaml.safe_load((INFRA / "k8s" / "rayjob.yaml").read_text())
    assert doc["kind"] == "RayJob" and doc["apiVersion"] == "ray.io/v1"
    assert doc["spec"]["rayClusterSpec"]["rayVersion"] == version("ray")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "training"]
    training_parser().parse_args(argv[3:])  # exits (fails the test) on an unknown or malformed flag


def test_ray_cluster_launcher_yaml_matches_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text()), schema)


def test_airflow_dag_tasks_call_real_commands():
    source = (INFRA / "airflow" / "fulcrum_dag.py").read_text()
    tree = ast.parse(source)
    names = {"CONFIG": "C", "RUN_ID": "R"}  # the DAG's string constants, with its two templated values
    consts = {t.id: eval(compile(ast.Expression(n.value), "dag", "eval"), {"__builtins__": {}}, names)  # noqa: S307
              for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
              if isinstance(t, ast.Name) and t.id in ("SPARK_STAGES", "TRAIN", "AUDIT", "REPORT")}  # fmt: skip
    assert "$(python -m jobs.lakehouse.session submit-args) run C --until curate" in consts["SPARK_STAGES"]
    train = shlex.split(re.sub(r"\{\{.*?\}\}", "http://x:8265", consts["TRAIN"]))  # Jinja -> a value
    assert train == ["fulcrum", "run", "C", "--from", "train", "--until", "train", "--run-id", "R",
                     "--set", "ray.address=http://x:8265"]  # the train stage, submitted as a Ray job  # fmt: skip
    audit = re.sub(r"\{\{.*?\}\}", "http://x:8265", consts["AUDIT"])  # the audit's models train as a Ray job
    assert "submit-args) run C --from audit --until oversample --run-id R --set ray.address=http://x:8265" in audit
    assert shlex.split(consts["REPORT"])[:2] == ["fulcrum", "report"]
    if importlib.util.find_spec("airflow") is None:
        pytest.skip("Airflow is not installed: the DAG was parsed, not imported")
    spec = importlib.util.spec_from_file_location("fulcrum_dag", INFRA / "airflow" / "fulcrum_dag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert [t.task_id for t in module.dag.topological_sort()] == ["spark_stages", "audit", "train", "report"]


def test_dockerfile_installs_pyprojects_dependency_set_with_java_17():
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M) and "openjdk-17-jre-headless" in text
    assert "COPY pyproject.toml" in text and re.search(r"pip install [^\n]*\s\.\s*$", text, re.M)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for top in {p.split(".")[0] for p in packages}:  # every package pyproject installs is copied in
        assert f"COPY {top}/ {top}/" in text
    assert "RUN python -m jobs.lakehouse.session" in text  # the Delta jars cached in the image


def test_shell_recipes_parse():
    subprocess.run(["bash", "-n", str(INFRA / "spark" / "standalone.sh")], check=True)
    for line in (INFRA / "cron" / "fulcrum.cron").read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]:
            argv = shlex.split(line)[5:]
            assert argv[:3] == ["flock", "-n", argv[2]] and argv[3] == "fulcrum" and argv[4] in COMMANDS
