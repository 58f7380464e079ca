# Secret Manager secrets: Terraform creates the secrets (the named containers) and who may
# read them. The values are added out of band, e.g.
#   printf '%s' "$PG_PASSWORD" | gcloud secrets versions add capa-postgres-password --data-file=-
# so no password is ever in this repository, in tfvars or in Terraform state.

resource "google_secret_manager_secret" "pg_password" {
  secret_id = var.pg_password_secret_id
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "sqlserver_password" {
  secret_id = var.sqlserver_password_secret_id
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# Datastream reads the PostgreSQL password itself (secret_manager_stored_password).
resource "google_secret_manager_secret_iam_member" "pg_password_datastream" {
  secret_id = google_secret_manager_secret.pg_password.id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.datastream_agent
}

# The apply job and the DAGs resolve secrets at run time (never through Terraform).
resource "google_secret_manager_secret_iam_member" "pg_password_composer" {
  secret_id = google_secret_manager_secret.pg_password.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.composer.email}"
}

resource "google_secret_manager_secret_iam_member" "sqlserver_password_composer" {
  secret_id = google_secret_manager_secret.sqlserver_password.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.composer.email}"
}
