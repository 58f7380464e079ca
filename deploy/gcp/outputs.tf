output "landing_bucket" {
  description = "Bucket Datastream writes Avro files to."
  value       = google_storage_bucket.landing.name
}

output "artifacts_bucket" {
  description = "Bucket of the Flex Template spec, Spark code and Dataflow staging."
  value       = google_storage_bucket.artifacts.name
}

output "apply_template_gcs_path" {
  description = "Where `gcloud dataflow flex-template build` must write the apply job's spec."
  value       = local.apply_template_gcs_path
}

output "crm_template_gcs_path" {
  description = "Where `gcloud dataflow flex-template build` must write the CRM batch job's spec (launched by the crm_batch DAG)."
  value       = local.crm_template_gcs_path
}

output "notification_subscription" {
  description = "Pub/Sub subscription the bucket reader consumes (one message per finalized file)."
  value       = google_pubsub_subscription.datastream_files_reader.id
}

output "datastream_stream" {
  description = "Datastream stream id (start it with datastream_stream_state = \"RUNNING\")."
  value       = google_datastream_stream.f2.id
}

output "kafka_bootstrap_servers" {
  description = "Bootstrap address of the canonical topic's cluster."
  value       = local.kafka_bootstrap
}

output "composer_dag_prefix" {
  description = "gs:// folder the DAGs are uploaded to."
  value       = google_composer_environment.capa.config[0].dag_gcs_prefix
}

output "composer_airflow_uri" {
  description = "Airflow web UI of the Composer environment."
  value       = google_composer_environment.capa.config[0].airflow_uri
}

output "service_accounts" {
  description = "Service accounts of the apply job, the Spark batches and Composer."
  value = {
    apply    = google_service_account.dataflow.email
    spark    = google_service_account.dataproc.email
    composer = google_service_account.composer.email
  }
}
