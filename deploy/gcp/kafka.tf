# The canonical change-event topic on GCP: Managed Service for Apache Kafka.
# Choice: the same Kafka protocol, topic names, keys (source + table + primary key) and
# canonical Avro values as the local and on-prem stacks, so the apply job and any other
# consumer are identical across targets. Pub/Sub would need a second codec path and loses
# per-key ordering across partitions. Set kafka_enabled = false to use brokers you run.

resource "google_managed_kafka_cluster" "canonical" {
  count = var.kafka_enabled ? 1 : 0

  cluster_id = "${local.name}-kafka"
  location   = var.region
  labels     = local.labels

  capacity_config {
    vcpu_count   = var.kafka_vcpu_count
    memory_bytes = var.kafka_memory_bytes
  }

  gcp_config {
    access_config {
      network_configs {
        subnet = var.subnetwork
      }
    }
  }

  rebalance_config {
    mode = "AUTO_REBALANCE_ON_SCALE_UP"
  }

  depends_on = [google_project_service.apis]
}

resource "google_managed_kafka_topic" "canonical" {
  count = var.kafka_enabled ? 1 : 0

  topic_id           = var.kafka_topic
  cluster            = google_managed_kafka_cluster.canonical[0].cluster_id
  location           = var.region
  partition_count    = var.kafka_partitions
  replication_factor = 3

  # capa's record-size limit (kafka.max_message_bytes, 16 MiB) + 64 KiB framing headroom
  # (connectors/kafka/limits.py); larger events are dead-lettered before they are produced.
  configs = {
    "cleanup.policy"    = "delete"
    "retention.ms"      = "604800000"
    "max.message.bytes" = "16842752"
  }
}

resource "google_managed_kafka_topic" "dead_letter" {
  count = var.kafka_enabled ? 1 : 0

  topic_id           = var.kafka_dlq_topic
  cluster            = google_managed_kafka_cluster.canonical[0].cluster_id
  location           = var.region
  partition_count    = 1
  replication_factor = 3

  configs = {
    "cleanup.policy"    = "delete"
    "retention.ms"      = "2592000000"
    "max.message.bytes" = "16842752"
  }
}
