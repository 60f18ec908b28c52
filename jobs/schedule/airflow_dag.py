"""Airflow DAGs: nightly medarchive migration and a weekly deep audit.

Copy into your Airflow dags/ folder and set the Airflow Variables medarchive_src,
medarchive_dst and medarchive_key_file. Each task runs the medarchive CLI (installed
in the worker's environment); a non-zero exit (dead letters with --strict, or any
audit failure) fails the task and alerts as your Airflow is configured to.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator

DEFAULTS = {"retries": 2, "retry_delay": timedelta(minutes=10)}
CONFIG = "{{ var.value.get('medarchive_pipeline_config', 'jobs/configs/local.json') }}"

with DAG(
    "medarchive_nightly_migrate",
    schedule="30 1 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULTS,
    tags=["medarchive"],
) as migrate_dag:
    migrate = BashOperator(
        task_id="migrate",
        bash_command=(
            "medarchive migrate {{ var.value.medarchive_src }} {{ var.value.medarchive_dst }} "
            "--key-file {{ var.value.medarchive_key_file }} --pipeline-config " + CONFIG + " --no-progress"
        ),
    )
    sampled_audit = BashOperator(
        task_id="sampled_audit",
        bash_command="medarchive audit {{ var.value.medarchive_dst }} --sample 0.05",
    )
    migrate >> sampled_audit

with DAG(
    "medarchive_weekly_deep_audit",
    schedule="0 3 * * 0",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULTS,
    tags=["medarchive"],
) as audit_dag:
    BashOperator(
        task_id="deep_audit",
        bash_command=(
            "medarchive audit {{ var.value.medarchive_dst }} --deep "
            "--key-file {{ var.value.medarchive_key_file }} --pipeline-config " + CONFIG
        ),
    )

__all__ = ["migrate_dag", "audit_dag"]
