# Every finalized Datastream file -> a Pub/Sub message -> the bucket reader of the apply job.
# The reader never lists the bucket: the notification carries bucket + object name, and the
# message is acked only after the file's events are on the canonical topic.

data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

resource "google_pubsub_topic" "datastream_files" {
  name   = "${local.name}-datastream-files"
  labels = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "datastream_files_dead_letter" {
  name   = "${local.name}-datastream-files-dead-letter"
  labels = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic_iam_member" "gcs_publishes_notifications" {
  topic  = google_pubsub_topic.datastream_files.id
  role   = "roles/pubsub.publisher"
  member = local.gcs_agent
}

resource "google_storage_notification" "datastream_files" {
  bucket             = google_storage_bucket.landing.name
  payload_format     = "JSON_API_V1"
  topic              = google_pubsub_topic.datastream_files.id
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = "${local.datastream_root}/"

  depends_on = [google_pubsub_topic_iam_member.gcs_publishes_notifications]
}

resource "google_pubsub_subscription" "datastream_files_reader" {
  name                       = "${local.name}-datastream-files-reader"
  topic                      = google_pubsub_topic.datastream_files.id
  ack_deadline_seconds       = 120
  message_retention_duration = "604800s"
  labels                     = local.labels

  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  # A notification that keeps failing (e.g. an unreadable file) is parked, not retried forever.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.datastream_files_dead_letter.id
    max_delivery_attempts = 10
  }
}

resource "google_pubsub_subscription" "datastream_files_dead_letter" {
  name                       = "${local.name}-datastream-files-dead-letter"
  topic                      = google_pubsub_topic.datastream_files_dead_letter.id
  message_retention_duration = "604800s"
  labels                     = local.labels

  expiration_policy {
    ttl = ""
  }
}

# Pub/Sub's service agent moves undeliverable messages to the dead-letter topic.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.datastream_files_dead_letter.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  subscription = google_pubsub_subscription.datastream_files_reader.id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_subscription_iam_member" "reader_dataflow" {
  subscription = google_pubsub_subscription.datastream_files_reader.id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.dataflow.email}"
}
