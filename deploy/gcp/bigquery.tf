# BigQuery: raw (replicas + changelogs written by the apply job) and consumption (Spark models).

resource "google_bigquery_dataset" "raw" {
  dataset_id    = "raw"
  friendly_name = "capa raw"
  description   = "Replicas raw.<source>_<schema>_<table> and their _changelog tables, written by the capa apply job."
  location      = var.bq_location
  labels        = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_bigquery_dataset" "consumption" {
  dataset_id    = "consumption"
  friendly_name = "capa consumption"
  description   = "Final tables built from raw by the Spark SQL models (spark_jobs/models)."
  location      = var.bq_location
  labels        = local.labels

  depends_on = [google_project_service.apis]
}

# --- ops users: read consumption, run query jobs ---------------------------------------------
resource "google_bigquery_dataset_iam_member" "ops_consumption_viewer" {
  dataset_id = google_bigquery_dataset.consumption.dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = "group:${var.ops_users_group}"
}

resource "google_project_iam_member" "ops_job_user" {
  project = var.project_id
  role    = "roles/bigquery.jobUser"
  member  = "group:${var.ops_users_group}"
}

# --- data science: read raw + consumption, Storage Read API sessions (pandas/Spark readers) ---
resource "google_bigquery_dataset_iam_member" "ds_viewer" {
  for_each = {
    raw         = google_bigquery_dataset.raw.dataset_id
    consumption = google_bigquery_dataset.consumption.dataset_id
  }

  dataset_id = each.value
  role       = "roles/bigquery.dataViewer"
  member     = "group:${var.data_science_group}"
}

resource "google_project_iam_member" "ds_read_session_user" {
  project = var.project_id
  role    = "roles/bigquery.readSessionUser"
  member  = "group:${var.data_science_group}"
}

resource "google_project_iam_member" "ds_job_user" {
  project = var.project_id
  role    = "roles/bigquery.jobUser"
  member  = "group:${var.data_science_group}"
}

# --- pipelines: the apply job writes raw; the Spark models read raw and write consumption -----
resource "google_bigquery_dataset_iam_member" "dataflow_raw_editor" {
  dataset_id = google_bigquery_dataset.raw.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = "serviceAccount:${google_service_account.dataflow.email}"
}

resource "google_bigquery_dataset_iam_member" "dataproc_raw_viewer" {
  dataset_id = google_bigquery_dataset.raw.dataset_id
  role       = "roles/bigquery.dataViewer"
  member     = "serviceAccount:${google_service_account.dataproc.email}"
}

resource "google_bigquery_dataset_iam_member" "dataproc_consumption_editor" {
  dataset_id = google_bigquery_dataset.consumption.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = "serviceAccount:${google_service_account.dataproc.email}"
}
