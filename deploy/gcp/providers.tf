provider "google" {
  project = var.project_id
  region  = var.region
}

# google_dataflow_flex_template_job is a beta resource.
provider "google-beta" {
  project = var.project_id
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  # Paths of the repository files this configuration ships to GCP.
  repo_root = abspath("${path.module}/../..")
  name      = var.name_prefix
  labels    = merge({ app = "capa", managed-by = "terraform" }, var.labels)

  # Google-managed service agents.
  datastream_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-datastream.iam.gserviceaccount.com"
  gcs_agent        = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}
