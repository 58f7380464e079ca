# Cloud Composer 3 runs the DAGs of dags/: it submits the Dataproc Serverless batches of the
# Spark models and the maintenance tasks. DAG files only wire tasks (STYLE rule 22).
# Static settings live in deploy/composer/environment.json; this file adds the
# project-specific ones.

locals {
  composer_settings = jsondecode(file("${local.repo_root}/deploy/composer/environment.json"))
  # Composer puts its bucket's dags/ folder on PYTHONPATH and parses DAG files there. Uploaded:
  # the DAG files with their .airflowignore, and beside them the capa code the DAG files import
  # when they are parsed (typed config and errors; the Spark project's model order and its
  # models). tests/unit/test_dag_profiles_render.py imports the gcp DAGs from exactly this set.
  dag_globs      = ["**/*.py", ".airflowignore"]
  dag_code_globs = ["capa/**/*.py", "capa/schemas/*.avsc", "connectors/**/*.py", "connectors/crm/*.yaml", "spark_jobs/**/*.py", "spark_jobs/models/*.sql"]
  dag_files      = toset(flatten([for g in local.dag_globs : fileset("${local.repo_root}/dags", g)]))
  dag_code_files = toset(flatten([for g in local.dag_code_globs : fileset(local.repo_root, g)]))

  # Settings of the DAGs (dags/capa_dags/settings.py reads them from the environment); the
  # DAG tests render the gcp profile with exactly this map (tests/unit/test_dag_profiles_render.py).
  composer_dag_env = {
    CAPA_GCP_PROJECT                     = var.project_id
    CAPA_GCP_REGION                      = var.region
    CAPA_DATAPROC_SPECS                  = "/home/airflow/gcs/data/dataproc"
    CAPA__WAREHOUSE__TYPE                = "bigquery"
    CAPA__WAREHOUSE__PROJECT             = var.project_id
    CAPA__WAREHOUSE__RAW_DATASET         = google_bigquery_dataset.raw.dataset_id
    CAPA__WAREHOUSE__CONSUMPTION_DATASET = google_bigquery_dataset.consumption.dataset_id
    CAPA__WAREHOUSE__LOCATION            = var.bq_location
    # The gcp DAG profile (dags/capa_dags/gcp.py): CRM batch Flex Template launches.
    CAPA__DAGS__CRM_WAREHOUSE             = "bigquery:${var.project_id}"
    CAPA__DAGS__DATAFLOW_CRM_TEMPLATE     = local.crm_template_gcs_path
    CAPA__DAGS__DATAFLOW_SERVICE_ACCOUNT  = google_service_account.dataflow.email
    CAPA__DAGS__DATAFLOW_SUBNETWORK       = local.dataflow_subnetwork
    CAPA__DAGS__DATAFLOW_TEMP_LOCATION    = local.dataflow_temp_location
    CAPA__DAGS__DATAFLOW_STAGING_LOCATION = local.dataflow_staging_location
  }
  composer_env = merge(local.composer_settings.env_variables, local.composer_dag_env)
}

resource "google_service_account" "composer" {
  account_id   = "${local.name}-composer"
  display_name = "capa Cloud Composer environment"

  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "composer" {
  for_each = toset([
    "roles/composer.worker",
    "roles/dataproc.editor",
    "roles/bigquery.jobUser",
    "roles/dataflow.developer",
  ])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.composer.email}"
}

# Composer launches the CRM batch Flex Template, whose workers run as the Dataflow account.
resource "google_service_account_iam_member" "composer_acts_as_dataflow" {
  service_account_id = google_service_account.dataflow.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.composer.email}"
}

# The DAGs' BigQuery checks read table metadata of raw and consumption and the CRM load ledger.
resource "google_bigquery_dataset_iam_member" "composer_viewer" {
  for_each = {
    raw         = google_bigquery_dataset.raw.dataset_id
    consumption = google_bigquery_dataset.consumption.dataset_id
  }

  dataset_id = each.value
  role       = "roles/bigquery.dataViewer"
  member     = "serviceAccount:${google_service_account.composer.email}"
}

# Composer submits batches that run as the Spark service account.
resource "google_service_account_iam_member" "composer_acts_as_dataproc" {
  service_account_id = google_service_account.dataproc.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.composer.email}"
}

resource "google_storage_bucket_iam_member" "composer_bucket" {
  bucket = google_storage_bucket.composer.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.composer.email}"
}

# Composer's service agent must be able to manage the environment's service account.
resource "google_service_account_iam_member" "composer_agent_ext" {
  service_account_id = google_service_account.composer.name
  role               = "roles/composer.ServiceAgentV2Ext"
  member             = "serviceAccount:service-${data.google_project.this.number}@cloudcomposer-accounts.iam.gserviceaccount.com"
}

resource "google_composer_environment" "capa" {
  name   = "${local.name}-composer"
  region = var.region
  labels = local.labels

  config {
    environment_size = var.composer_environment_size

    software_config {
      image_version            = var.composer_image_version
      env_variables            = local.composer_env
      airflow_config_overrides = local.composer_settings.airflow_config_overrides
      pypi_packages            = local.composer_settings.pypi_packages
    }

    node_config {
      service_account = google_service_account.composer.email
      network         = var.network
      subnetwork      = var.subnetwork
    }
  }

  storage_config {
    bucket = google_storage_bucket.composer.name
  }

  depends_on = [
    google_project_iam_member.composer,
    google_service_account_iam_member.composer_agent_ext,
    google_storage_bucket_iam_member.composer_bucket,
  ]
}

# The DAGs: dags/**/*.py and dags/.airflowignore go to the environment bucket's dags/ folder.
resource "google_storage_bucket_object" "dags" {
  for_each = local.dag_files

  bucket = google_storage_bucket.composer.name
  name   = "dags/${each.value}"
  source = "${local.repo_root}/dags/${each.value}"

  depends_on = [google_composer_environment.capa]
}

# The code the DAG files import, beside them (see local.dag_code_globs).
resource "google_storage_bucket_object" "dag_code" {
  for_each = local.dag_code_files

  bucket = google_storage_bucket.composer.name
  name   = "dags/${each.value}"
  source = "${local.repo_root}/${each.value}"

  depends_on = [google_composer_environment.capa]
}
