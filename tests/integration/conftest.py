"""Service fixtures for integration tests: real Kafka and PostgreSQL processes (capa_app/stack).

Both are session-scoped, run on FREE ports chosen at start-up, keep their state in a
temporary directory (world-traversable, because PostgreSQL runs as the ``postgres`` OS
user), wait until healthy, print their log tail when start-up fails, and are always
stopped (by PID) at the end of the session.

``capa_settings`` -> :class:`capa.config.CapaSettings`
    The configuration both services were started with: ``state_dir`` (the temp dir),
    ``kafka.port`` / ``kafka.controller_port`` / ``kafka.bootstrap``, ``postgres.port``,
    ``postgres.dsn()`` ... Use it (``capa_settings.model_copy(update=...)``) to configure
    the code under test against these services.

``kafka`` -> :class:`capa_app.stack.kafka.KafkaBroker` (single-node KRaft, Kafka 4.x)
    ``.bootstrap``   "127.0.0.1:<port>" for ``bootstrap.servers``
    ``.host`` / ``.port``
    ``.config``      the :class:`~capa.config.KafkaConfig` (``.topic`` = canonical topic and
                     ``.dlq_topic``, both already created with ``.partitions`` partitions)
    ``.admin()``     a confluent-kafka AdminClient
    ``.log_path``    the broker log
    Internal topics use replication factor 1; ``auto.create.topics.enable=false``: create
    your own topics (e.g. ``capa_app.stack.kafka.ensure_topics(kafka.admin(), {"t": 1})``).

``postgres`` -> :class:`capa_app.stack.postgres.PostgresCluster` (PostgreSQL 15)
    ``.dsn``         libpq conninfo of ``shop`` (host, port, dbname, user and the password)
    ``.host`` / ``.port`` / ``.database`` ("shop") / ``.user`` ("postgres", superuser,
                     scram-sha-256 with the password ``capa_settings`` generated into the
                     state dir: ``capa_settings.postgres.password``)
    ``.config``      the :class:`~capa.config.PostgresConfig`
    ``.log_path``    the server log
    Runs with ``wal_level=logical`` (10 replication slots / WAL senders), so Debezium can
    create slots and publications; ``shop`` holds the sample schema of
    ``capa_app/stack/sample_f2.sql`` (customers, orders, order_items).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from capa.config import CapaSettings
from capa_app.stack.base import StateDirs
from capa_app.stack.kafka import KafkaBroker
from capa_app.stack.postgres import PostgresCluster
from capa_app.stack.throwaway import running_service, throwaway_settings, throwaway_state_dir


@pytest.fixture(scope="session")
def capa_settings() -> Iterator[CapaSettings]:
    state_dir = throwaway_state_dir("capa-it-")
    yield throwaway_settings(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka(capa_settings: CapaSettings) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(StateDirs(capa_settings.state_dir), capa_settings.kafka)
    with running_service(broker):
        yield broker


@pytest.fixture(scope="session")
def postgres(capa_settings: CapaSettings) -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(StateDirs(capa_settings.state_dir), capa_settings.postgres)
    with running_service(cluster):
        yield cluster
