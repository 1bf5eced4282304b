"""Airflow DAG: the Spark stages through spark-submit, the label audit and cross-validation as Ray jobs, the report.

Copy to the DAGs folder; the workers need the project installed (the image from infra/Dockerfile) and
these Variables: ``fulcrum_config`` (the pipeline YAML; its lake and reports on storage the Spark
executors and the Ray nodes reach), ``spark_master`` (spark://HOST:7077 or k8s://...), ``ray_address``
(http://HEAD:8265, the Ray Jobs API). Every task is a shell command a person can run by hand; every
stage is idempotent, so Airflow's retries are safe. One run per dataset at a time. The run records every
stage, training included, in the dataset's run ledger under one run id, so ``fulcrum report`` shows the
same report as a ``fulcrum run`` (the audit, the CV and its plots).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

CONFIG = "{{ var.value.fulcrum_config }}"
RUN_ID = "airflow-{{ ts_nodash }}"

# The Spark stages: the submit's options add the Delta jars (--packages) and the Delta session conf.
SPARK_STAGES = (
    "spark-submit --master {{ var.value.spark_master }} --deploy-mode client "
    "$(python -m jobs.lakehouse.session submit-args) run " + CONFIG + " --until curate --run-id " + RUN_ID
)
# The label audit, then oversampling: the audit's out-of-fold models (silver's real rows) train as a Ray job
# (ray.address is the Jobs API), its verdicts act on silver before oversample builds gold on Spark.
AUDIT = (
    "spark-submit --master {{ var.value.spark_master }} --deploy-mode client "
    "$(python -m jobs.lakehouse.session submit-args) run " + CONFIG + " --from audit --until oversample --run-id "
    + RUN_ID + " --set ray.address={{ var.value.ray_address }}"
)
# Training: the train stage with ray.address set to the Jobs API submits `python -m training` as a Ray job
# (`ray job submit` waits, streams the job's log, exits non-zero when the job fails) and records the run.
TRAIN = "fulcrum run " + CONFIG + " --from train --until train --run-id " + RUN_ID + \
    " --set ray.address={{ var.value.ray_address }}"
REPORT = "fulcrum report " + CONFIG + " " + RUN_ID

with DAG(
    dag_id="fulcrum",
    description="validate and curate on Spark; audit the labels (Ray and Spark); oversample; cross-validate on Ray",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two runs writing the same tables would conflict (the loser fails cleanly)
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["fulcrum"],
) as dag:
    spark_stages = BashOperator(task_id="spark_stages", bash_command=SPARK_STAGES)
    train = BashOperator(task_id="train", bash_command=TRAIN)
    audit = BashOperator(task_id="audit", bash_command=AUDIT)
    report = BashOperator(task_id="report", bash_command=REPORT, trigger_rule="all_done")
    spark_stages >> audit >> train >> report
