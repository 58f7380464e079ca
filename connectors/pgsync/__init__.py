"""Fast initial sync of PostgreSQL tables (the embedded default's first copy).

The replication slot is created with an exported snapshot; parallel readers copy each table
in CTID ranges inside that snapshot (Arrow through the ADBC PostgreSQL driver) and append
the rows to the raw replica and its changelog in bulk; Debezium then streams from the same
slot with ``snapshot.mode=no_data``. See :mod:`connectors.pgsync.sync`.
"""
