"""Topic creation (idempotent) for the canonical and dead-letter topics."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from capa.config import KafkaConfig
from capa.errors import ConfigError, ServiceUnavailable
from connectors.kafka.clients import as_config, client_config
from connectors.kafka.limits import topic_config

logger = logging.getLogger(__name__)


def ensure_topics(
    source: KafkaConfig | str,
    partitions: Mapping[str, int],
    *,
    max_message_bytes: int | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create each topic with its partition count unless it exists already (``source``: a
    :class:`KafkaConfig`, or a plaintext ``host:port``).

    New topics take ``max.message.bytes`` from capa's record-size limit (``max_message_bytes``,
    default the config's; :mod:`connectors.kafka.limits`); existing topics are left as they are.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    config = as_config(source)
    bootstrap = config.bootstrap
    admin = AdminClient(client_config(config))
    limits = topic_config(max_message_bytes or config.max_message_bytes)
    wanted = [
        NewTopic(t, num_partitions=n, replication_factor=1, config=limits)
        for t, n in partitions.items()
    ]
    futures = admin.create_topics(wanted, request_timeout=timeout_s, operation_timeout=timeout_s)
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            logger.info("created topic %s", topic)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if error.code() in (KafkaError.TOPIC_EXCEPTION, KafkaError.INVALID_PARTITIONS):
                raise ConfigError(f"cannot create Kafka topic {topic!r}: {error.str()}") from exc
            raise ServiceUnavailable(
                f"cannot create Kafka topic {topic!r} on {bootstrap}: {error.str()}"
            ) from exc
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"Kafka at {bootstrap} did not answer within {timeout_s}s; is it running?"
            ) from exc
