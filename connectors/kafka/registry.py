"""A minimal Confluent schema-registry client over plain HTTP (stdlib only).

Two endpoints are used, both part of the registry's stable REST API:

* ``POST /subjects/{subject}/versions`` with ``{"schema": "<avsc text>"}`` -> ``{"id": N}``
  (registers the schema, or returns the id it already has);
* ``GET /schemas/ids/{id}`` -> ``{"schema": "<avsc text>"}``.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from capa.errors import ConfigError, ServiceUnavailable

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRegistryClient:
    """Registers and looks up Avro schemas; results are cached per process."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"schema_registry_url {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}

    def register(self, subject: str, schema_text: str) -> int:
        """The registry id of ``schema_text`` under ``subject`` (registering it if new)."""
        cache_key = (subject, schema_text)
        if cache_key not in self._ids:
            path = f"/subjects/{urllib.parse.quote(subject, safe='')}/versions"
            reply = self._call("POST", path, {"schema": schema_text})
            self._ids[cache_key] = int(reply["id"])
            self._schemas[int(reply["id"])] = schema_text
            logger.info("schema registered under subject %s with id %s", subject, reply["id"])
        return self._ids[cache_key]

    def schema(self, schema_id: int) -> str:
        """The schema text of ``schema_id``."""
        if schema_id not in self._schemas:
            reply = self._call("GET", f"/schemas/ids/{int(schema_id)}", None)
            self._schemas[schema_id] = str(reply["schema"])
        return self._schemas[schema_id]

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": CONTENT_TYPE}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            if exc.code >= 500:
                raise ServiceUnavailable(
                    f"schema registry {self.url} answered {exc.code} to {method} {path}: {detail}"
                ) from exc
            raise ConfigError(
                f"schema registry {self.url} rejected {method} {path} ({exc.code}): {detail}; "
                "check schema_registry_url and the subject's compatibility setting"
            ) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ServiceUnavailable(
                f"schema registry {self.url} is not reachable ({exc}); start it or unset "
                "CAPA__KAFKA__SCHEMA_REGISTRY_URL to use Avro single-object encoding"
            ) from exc
