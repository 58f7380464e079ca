# capa on GCP: provider and Terraform versions.
#
# State holds connection metadata (never the passwords: those live in Secret Manager and
# are referenced by name). Keep state in a GCS backend in real use, e.g.
#   terraform init -backend-config="bucket=<state-bucket>" -backend-config="prefix=capa"
# after uncommenting the backend block below.
terraform {
  required_version = ">= 1.6"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.40, < 8.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 6.40, < 8.0"
    }
  }

  # backend "gcs" {}
}
