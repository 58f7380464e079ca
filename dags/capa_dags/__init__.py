"""Helpers shared by capa's DAG files: settings and the deployment profiles (local, onprem, gcp).

Wiring only (STYLE rule 22): a profile picks the operator for each kind of task (Spark model
build, raw freshness check, publish, CRM load); the DAG files keep the task ids and the model
order (``spark_jobs.project``) for every profile. ``.airflowignore`` keeps the DAG processor
from parsing this package as DAG files.
"""
