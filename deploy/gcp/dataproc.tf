# Spark SQL consumption models on Serverless for Apache Spark (Dataproc Serverless).
# No long-lived cluster: Composer submits one batch per run from the specs in
# deploy/dataproc/*.json.tftpl, rendered here and put in the Composer data folder
# (mounted on the workers as /home/airflow/gcs/data/dataproc/).

locals {
  spark_code_prefix = "gs://${google_storage_bucket.artifacts.name}/spark"
  # Built by `python deploy/dataproc/package.py` (capa + spark_jobs + the model SQL files).
  spark_code_zip   = "${local.repo_root}/.cache/deploy/capa_spark.zip"
  spark_entrypoint = "${local.repo_root}/deploy/dataproc/run_models.py"

  dataproc_specs = fileset("${local.repo_root}/deploy/dataproc", "*.json.tftpl")
  dataproc_spec_vars = {
    project_id          = var.project_id
    region              = var.region
    runtime_version     = var.dataproc_runtime_version
    service_account     = google_service_account.dataproc.email
    subnetwork          = var.subnetwork
    staging_bucket      = google_storage_bucket.artifacts.name
    code_prefix         = local.spark_code_prefix
    raw_dataset         = google_bigquery_dataset.raw.dataset_id
    consumption_dataset = google_bigquery_dataset.consumption.dataset_id
    bq_location         = var.bq_location
  }
}

resource "google_service_account" "dataproc" {
  account_id   = "${local.name}-spark"
  display_name = "capa Spark models (Serverless for Apache Spark)"

  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "dataproc" {
  for_each = toset([
    "roles/dataproc.worker",
    "roles/bigquery.jobUser",
    "roles/bigquery.readSessionUser",
    "roles/logging.logWriter",
  ])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.dataproc.email}"
}

resource "google_storage_bucket_object" "spark_entrypoint" {
  bucket = google_storage_bucket.artifacts.name
  name   = "spark/run_models.py"
  source = local.spark_entrypoint
}

resource "google_storage_bucket_object" "spark_code" {
  bucket = google_storage_bucket.artifacts.name
  name   = "spark/capa_spark.zip"
  source = local.spark_code_zip
}

resource "google_storage_bucket_object" "dataproc_specs" {
  for_each = local.dataproc_specs

  bucket       = google_storage_bucket.composer.name
  name         = "data/dataproc/${trimsuffix(each.value, ".tftpl")}"
  content_type = "application/json"
  content      = templatefile("${local.repo_root}/deploy/dataproc/${each.value}", local.dataproc_spec_vars)
}
