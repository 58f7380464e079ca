# The streaming apply job on Dataflow (beam_jobs/streaming_apply.py), launched from the Flex
# Template built out of deploy/dataflow/ (see deploy/README.md "Build the Flex Template").
# The job: canonical Kafka topic -> ordered, idempotent apply into BigQuery raw; poison
# records go to the dead-letter topic with the reason and the original bytes. Parameter
# names are the job's flags (beam_jobs/options.py).
#
# Upstream, the Datastream bucket reader (connectors/datastream/reader.py) consumes the
# notification subscription and produces canonical events to the same topic.

locals {
  apply_template_gcs_path = coalesce(
    var.apply_template_gcs_path,
    "gs://${google_storage_bucket.artifacts.name}/templates/capa-apply.json",
  )
  # The template's declared parameters: every key passed below must be one of them.
  apply_template_metadata = jsondecode(file("${local.repo_root}/deploy/dataflow/metadata.json"))
  apply_template_params   = toset([for p in local.apply_template_metadata.parameters : p.name])

  kafka_bootstrap = var.kafka_enabled ? one(google_managed_kafka_cluster.canonical[*].bootstrap_address) : var.kafka_bootstrap_servers

  # Worker settings shared by the apply job and the CRM batch launches of Composer
  # (composer.tf passes them to the DAGs): one definition of network, locations and template.
  dataflow_subnetwork       = "regions/${var.region}/subnetworks/${basename(var.subnetwork)}"
  dataflow_temp_location    = "gs://${google_storage_bucket.artifacts.name}/dataflow/temp"
  dataflow_staging_location = "gs://${google_storage_bucket.artifacts.name}/dataflow/staging"
  crm_template_gcs_path     = "gs://${google_storage_bucket.artifacts.name}/templates/capa-crm-batch.json"

  apply_parameters = {
    bootstrap      = local.kafka_bootstrap
    topic          = var.kafka_topic
    dlq_topic      = var.kafka_dlq_topic
    warehouse      = "bigquery:${var.project_id}"
    consumer_group = "capa-apply"
  }
}

resource "google_service_account" "dataflow" {
  account_id   = "${local.name}-apply"
  display_name = "capa apply job (Dataflow workers)"

  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "dataflow" {
  for_each = toset([
    "roles/dataflow.worker",
    "roles/bigquery.jobUser",
    "roles/managedkafka.client",
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
  ])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.dataflow.email}"
}

resource "google_dataflow_flex_template_job" "apply" {
  provider = google-beta
  count    = var.apply_job_enabled ? 1 : 0

  name                    = "${local.name}-apply"
  region                  = var.region
  container_spec_gcs_path = local.apply_template_gcs_path
  service_account_email   = google_service_account.dataflow.email
  subnetwork              = local.dataflow_subnetwork
  ip_configuration        = "WORKER_IP_PRIVATE"
  enable_streaming_engine = true
  machine_type            = var.apply_machine_type
  max_workers             = var.apply_max_workers
  staging_location        = local.dataflow_staging_location
  temp_location           = local.dataflow_temp_location
  on_delete               = "drain"
  labels                  = local.labels

  parameters = local.apply_parameters

  lifecycle {
    precondition {
      condition     = length(setsubtract(keys(local.apply_parameters), local.apply_template_params)) == 0
      error_message = "deploy/dataflow/metadata.json does not declare every parameter passed to the apply job."
    }
  }

  depends_on = [
    google_project_iam_member.dataflow,
    google_pubsub_subscription_iam_member.reader_dataflow,
    google_bigquery_dataset_iam_member.dataflow_raw_editor,
  ]
}
