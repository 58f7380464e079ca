# Inputs. No variable holds a secret: passwords live in Secret Manager and are referenced
# by secret id (see secrets.tf and deploy/README.md).

# --- project ------------------------------------------------------------------------------
variable "project_id" {
  description = "GCP project id that holds every capa resource."
  type        = string
}

variable "region" {
  description = "Region of Datastream, Dataflow, Dataproc, Composer, Pub/Sub and Managed Kafka."
  type        = string
  default     = "europe-west1"
}

variable "bq_location" {
  description = "BigQuery location of the raw and consumption datasets (must contain var.region's data)."
  type        = string
  default     = "EU"
}

variable "name_prefix" {
  description = "Prefix of every resource name (lower case, digits and dashes)."
  type        = string
  default     = "capa"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name_prefix))
    error_message = "name_prefix must be 2-21 chars of lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "labels" {
  description = "Extra labels put on every labelled resource."
  type        = map(string)
  default     = {}
}

variable "network" {
  description = "Self link or name of the VPC the workers, Composer and Managed Kafka attach to."
  type        = string
  default     = "default"
}

variable "subnetwork" {
  description = "Subnetwork in var.region, as projects/PROJECT/regions/REGION/subnetworks/NAME."
  type        = string
}

# --- source F2: PostgreSQL through Datastream ----------------------------------------------
variable "pg_host" {
  description = "Hostname or IP of the F2 PostgreSQL server, as Datastream reaches it."
  type        = string
}

variable "pg_port" {
  description = "Port of the F2 PostgreSQL server."
  type        = number
  default     = 5432
}

variable "pg_database" {
  description = "Database captured as source F2."
  type        = string
  default     = "shop"
}

variable "pg_user" {
  description = "Replication login used by Datastream (needs REPLICATION and SELECT on the tables)."
  type        = string
  default     = "datastream"
}

variable "pg_publication" {
  description = "Publication created on F2 for the captured tables (CREATE PUBLICATION ... FOR TABLE ...)."
  type        = string
  default     = "capa_datastream_f2"
}

variable "pg_replication_slot" {
  description = "pgoutput logical replication slot created on F2 for Datastream."
  type        = string
  default     = "capa_datastream_f2"
}

variable "pg_schemas" {
  description = "Schemas of F2 to stream (all tables of each; the publication limits what is sent)."
  type        = list(string)
  default     = ["public"]
}

variable "source_connectivity" {
  description = "How Datastream reaches F2: 'private' (VPC peering, private connection) or 'ip_allowlist' (public IP, allow Datastream's regional IPs on the server)."
  type        = string
  default     = "private"
  validation {
    condition     = contains(["private", "ip_allowlist"], var.source_connectivity)
    error_message = "source_connectivity must be 'private' or 'ip_allowlist'."
  }
}

variable "datastream_peering_cidr" {
  description = "Free /29 range in var.network reserved for the Datastream private connection."
  type        = string
  default     = "10.200.0.0/29"
}

variable "datastream_stream_state" {
  description = "Desired state of the stream: NOT_STARTED on the first apply, RUNNING to start it, PAUSED to pause."
  type        = string
  default     = "NOT_STARTED"
  validation {
    condition     = contains(["NOT_STARTED", "RUNNING", "PAUSED"], var.datastream_stream_state)
    error_message = "datastream_stream_state must be NOT_STARTED, RUNNING or PAUSED."
  }
}

variable "datastream_file_rotation_interval" {
  description = "Longest time Datastream keeps an Avro file open: the floor of end-to-end latency on GCP."
  type        = string
  default     = "15s"
}

# --- secrets (ids only; values are added with gcloud, never by Terraform) ------------------
variable "pg_password_secret_id" {
  description = "Secret Manager secret id holding the F2 PostgreSQL password of var.pg_user."
  type        = string
  default     = "capa-postgres-password"
}

variable "sqlserver_password_secret_id" {
  description = "Secret Manager secret id holding the F3 SQL Server password (Debezium connector)."
  type        = string
  default     = "capa-sqlserver-password"
}

# --- access --------------------------------------------------------------------------------
variable "ops_users_group" {
  description = "Google group of operations users: read consumption, run queries (e.g. capa-ops@example.com)."
  type        = string
}

variable "data_science_group" {
  description = "Google group of data scientists: read raw and consumption, Storage Read API sessions."
  type        = string
}

# --- canonical topic: Managed Service for Apache Kafka -------------------------------------
variable "kafka_enabled" {
  description = "Create the Managed Kafka cluster carrying the canonical topic (false: bring your own brokers)."
  type        = bool
  default     = true
}

variable "kafka_vcpu_count" {
  description = "vCPUs of the Managed Kafka cluster (minimum 3)."
  type        = number
  default     = 3
}

variable "kafka_memory_bytes" {
  description = "Memory of the Managed Kafka cluster in bytes (1-8 GiB per vCPU)."
  type        = number
  default     = 3221225472
}

variable "kafka_topic" {
  description = "Canonical change-event topic (same name as CAPA__KAFKA__TOPIC locally)."
  type        = string
  default     = "capa.changes"
}

variable "kafka_dlq_topic" {
  description = "Dead-letter topic (same name as CAPA__KAFKA__DLQ_TOPIC locally)."
  type        = string
  default     = "capa.changes.dlq"
}

variable "kafka_partitions" {
  description = "Partitions of the canonical topic (key = source + table + primary key)."
  type        = number
  default     = 3
}

variable "kafka_bootstrap_servers" {
  description = "Bootstrap servers when kafka_enabled = false (your own brokers reachable from the VPC)."
  type        = string
  default     = ""
}

# --- apply job: Dataflow Flex Template -------------------------------------------------------
variable "apply_job_enabled" {
  description = "Launch the apply job. Leave false until the Flex Template spec is built and pushed (deploy/README.md)."
  type        = bool
  default     = false
}

variable "apply_template_gcs_path" {
  description = "gs:// path of the built Flex Template spec; empty = gs://<artifacts bucket>/templates/capa-apply.json."
  type        = string
  default     = ""
}

variable "apply_max_workers" {
  description = "Maximum Dataflow workers of the apply job."
  type        = number
  default     = 3
}

variable "apply_machine_type" {
  description = "Machine type of the apply job workers."
  type        = string
  default     = "n2-standard-2"
}

# --- Spark models: Dataproc Serverless -------------------------------------------------------
variable "dataproc_runtime_version" {
  description = "Serverless for Apache Spark runtime (3.0 = Spark 4.0, Python 3.12)."
  type        = string
  default     = "3.0"
}

# --- orchestration: Cloud Composer 3 ---------------------------------------------------------
variable "composer_image_version" {
  description = "Composer 3 image (composer-3-airflow-X.Y.Z[-build.N]); list them with `gcloud composer environments list-image-versions`."
  type        = string
  default     = "composer-3-airflow-3.1.7"
}

variable "composer_environment_size" {
  description = "Composer environment size: ENVIRONMENT_SIZE_SMALL, _MEDIUM or _LARGE."
  type        = string
  default     = "ENVIRONMENT_SIZE_SMALL"
}
