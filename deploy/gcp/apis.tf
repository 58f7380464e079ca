# The Google APIs capa uses. Disabling them on destroy is left off: other workloads may use them.
locals {
  services = toset([
    "bigquery.googleapis.com",
    "bigquerystorage.googleapis.com",
    "composer.googleapis.com",
    "compute.googleapis.com",
    "dataflow.googleapis.com",
    "dataproc.googleapis.com",
    "datastream.googleapis.com",
    "iam.googleapis.com",
    "managedkafka.googleapis.com",
    "pubsub.googleapis.com",
    "secretmanager.googleapis.com",
    "servicenetworking.googleapis.com",
    "storage.googleapis.com",
  ])
}

resource "google_project_service" "apis" {
  for_each = local.services

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
