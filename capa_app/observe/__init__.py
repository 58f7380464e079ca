"""Observability of a running capa: the state exporter and the status page (``capa serve``)."""
