# Source F2 (PostgreSQL) -> Datastream -> Avro files in the landing bucket.
# F2 prerequisites (deploy/README.md, step "Prepare F2"): wal_level=logical, a publication
# var.pg_publication for the captured tables, a pgoutput slot var.pg_replication_slot, and a
# login var.pg_user with REPLICATION whose password is the latest version of the
# var.pg_password_secret_id secret.

locals {
  datastream_root = "datastream"
  # Objects land as <root>/<source>/<schema>_<table>/YYYY/MM/DD/HH/mm/<file>.avro.
  datastream_path = "f2"
}

# --- connectivity: private (VPC peering) or IP allowlist -----------------------------------
resource "google_datastream_private_connection" "f2" {
  count = var.source_connectivity == "private" ? 1 : 0

  private_connection_id = "${local.name}-f2"
  display_name          = "capa F2 private connection"
  location              = var.region
  labels                = local.labels

  vpc_peering_config {
    vpc    = "projects/${var.project_id}/global/networks/${basename(var.network)}"
    subnet = var.datastream_peering_cidr
  }

  depends_on = [google_project_service.apis]
}

# --- connection profiles --------------------------------------------------------------------
resource "google_datastream_connection_profile" "f2_postgres" {
  connection_profile_id = "${local.name}-f2-postgres"
  display_name          = "capa F2 PostgreSQL"
  location              = var.region
  labels                = local.labels

  postgresql_profile {
    hostname                       = var.pg_host
    port                           = var.pg_port
    username                       = var.pg_user
    database                       = var.pg_database
    secret_manager_stored_password = "${google_secret_manager_secret.pg_password.id}/versions/latest"
  }

  # Absent block = IP allowlisting: allow Datastream's regional public IPs on F2.
  dynamic "private_connectivity" {
    for_each = google_datastream_private_connection.f2
    content {
      private_connection = private_connectivity.value.id
    }
  }

  depends_on = [google_secret_manager_secret_iam_member.pg_password_datastream]
}

resource "google_datastream_connection_profile" "landing_gcs" {
  connection_profile_id = "${local.name}-landing-gcs"
  display_name          = "capa landing bucket"
  location              = var.region
  labels                = local.labels

  gcs_profile {
    bucket    = google_storage_bucket.landing.name
    root_path = "/${local.datastream_root}"
  }

  depends_on = [google_storage_bucket_iam_member.landing_datastream]
}

# --- the stream -----------------------------------------------------------------------------
resource "google_datastream_stream" "f2" {
  stream_id     = "${local.name}-f2"
  display_name  = "capa F2 PostgreSQL to GCS (Avro)"
  location      = var.region
  desired_state = var.datastream_stream_state
  labels        = local.labels

  source_config {
    source_connection_profile = google_datastream_connection_profile.f2_postgres.id

    postgresql_source_config {
      publication                   = var.pg_publication
      replication_slot              = var.pg_replication_slot
      max_concurrent_backfill_tasks = 4

      include_objects {
        dynamic "postgresql_schemas" {
          for_each = toset(var.pg_schemas)
          content {
            schema = postgresql_schemas.value
          }
        }
      }
    }
  }

  destination_config {
    destination_connection_profile = google_datastream_connection_profile.landing_gcs.id

    gcs_destination_config {
      path                   = local.datastream_path
      file_rotation_mb       = 50
      file_rotation_interval = var.datastream_file_rotation_interval

      # Avro keeps Datastream's typed payload (decimals with scale, timestamps as micros);
      # connectors/datastream reads exactly this format.
      avro_file_format {}
    }
  }

  # Snapshot every included table first (backfill events carry op "r"), then stream.
  backfill_all {}

  depends_on = [google_storage_notification.datastream_files]
}
