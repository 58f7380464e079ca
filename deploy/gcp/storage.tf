# Buckets: Datastream landing zone, build/run artifacts, and the Composer environment bucket.

resource "google_storage_bucket" "landing" {
  name                        = "${var.project_id}-${local.name}-datastream"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels

  # Datastream files are replayable input: keep them long enough to rebuild raw after an
  # incident, then let them go (raw keeps the changelog).
  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "artifacts" {
  name                        = "${var.project_id}-${local.name}-artifacts"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "composer" {
  name                        = "${var.project_id}-${local.name}-composer"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels

  depends_on = [google_project_service.apis]
}

# Datastream writes into the landing bucket with its service agent.
resource "google_storage_bucket_iam_member" "landing_datastream" {
  for_each = toset([
    "roles/storage.objectCreator",
    "roles/storage.objectViewer",
    "roles/storage.legacyBucketReader",
  ])

  bucket = google_storage_bucket.landing.name
  role   = each.value
  member = local.datastream_agent
}

# The apply job reads Datastream files and stages/temps its own files.
resource "google_storage_bucket_iam_member" "landing_dataflow" {
  bucket = google_storage_bucket.landing.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.dataflow.email}"
}

resource "google_storage_bucket_iam_member" "artifacts_dataflow" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.dataflow.email}"
}

resource "google_storage_bucket_iam_member" "artifacts_dataproc" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.dataproc.email}"
}

resource "google_storage_bucket_iam_member" "artifacts_composer" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.composer.email}"
}
