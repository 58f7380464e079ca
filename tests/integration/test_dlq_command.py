"""``capa dlq`` against the real Kafka and the real streaming apply job.

The dead letters are made by the normal path: canonical events and poison records go
through the Kafka producer, the streaming apply job (a subprocess, ``--stop_at_end``)
dead-letters what the warehouse refuses and what does not decode. The refusal is a real
one with a real fix: the ``widgets`` replica was created with ``qty`` as a boolean, the
source now sends integers, so the warehouse rejects every widgets change with "column
'qty' changed type ... migrate the raw table ... and replay the events". The test lists
and shows the letters (consuming nothing), replays before the fix (still failing, left
on the topic), migrates the table (casts ``qty`` to integer, as an operator would), then
replays twice: the replica has each row once and the second replay writes nothing. The
poison records cannot be decoded at all: replay reports them and leaves them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from test_streaming_apply import Topic, job_argv, make_event, run_job

from capa.events import ChangeEvent, Op, SourceKind
from capa.warehouse import open_warehouse

ROOT = Path(__file__).resolve().parents[2]
WIDGETS = "raw.f2_public_widgets"
POISON = [b"not avro at all", b"\xc3\x01" + b"\x00" * 8 + b"bad body"]


def widget(key: int, seq: int, qty: Any) -> ChangeEvent:
    return ChangeEvent(
        source="f2",
        source_kind=SourceKind.POSTGRES,
        database="shop",
        schema="public",
        table="widgets",
        op=Op.INSERT,
        position=f"{seq:016x}.1",
        commit_ts_us=int(time.time() * 1e6),
        primary_key=("id",),
        key={"id": key},
        before=None,
        after={"id": key, "qty": qty},
    )


def capa_dlq(topic: Topic, lake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CAPA__KAFKA__BOOTSTRAP_SERVERS": topic.bootstrap,
        "CAPA__KAFKA__TOPIC": topic.name,
        "CAPA__KAFKA__DLQ_TOPIC": topic.dlq,
        "CAPA__WAREHOUSE__TYPE": "local",
        "CAPA__WAREHOUSE__PATH": str(lake),
    }
    return subprocess.run(
        [sys.executable, "-m", "capa_app.cli", "dlq", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def migrate_qty_to_integer(lake: Path) -> None:
    """The operator's fix: rewrite the replica and its changelog with ``qty`` as bigint."""
    for name in ("f2_public_widgets", "f2_public_widgets_changelog"):
        path = str(lake / "raw" / name)
        table = DeltaTable(path).to_pyarrow_table()
        index = table.schema.get_field_index("qty")
        table = table.set_column(
            index, pa.field("qty", pa.int64()), pc.cast(table["qty"], pa.int64())
        )
        write_deltalake(path, table, mode="overwrite", schema_mode="overwrite")


def widget_rows(lake: Path) -> dict[int, Any]:
    return {r["id"]: r["qty"] for r in open_warehouse(f"local:{lake}").rows(WIDGETS)}


def test_dlq_list_show_and_replay_after_the_fix(kafka: Any, tmp_path: Path) -> None:
    lake = tmp_path / "wh"
    open_warehouse(f"local:{lake}").apply([widget(0, 1, True)])  # the replica as it was
    topic = Topic(kafka, partitions=1)
    items = [make_event(k, 10 + k, Op.INSERT) for k in range(20)]
    widgets = [widget(k, 100 + k, k * 10) for k in range(1, 6)]
    topic.produce(items + widgets, POISON)
    run_job(job_argv(topic, lake, tmp_path / "status.json", "--stop_at_end"), tmp_path / "job.log")
    assert widget_rows(lake) == {0: True}

    listed = capa_dlq(topic, lake, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    groups: dict[str, list[dict[str, Any]]] = {}
    for group in json_lines(listed.stdout):
        groups.setdefault(group["table"], []).append(group)
    assert set(groups) == {WIDGETS, "(undecodable)"}
    (widget_group,) = groups[WIDGETS]  # one reason for the five
    assert widget_group["count"] == 5 and "changed type" in widget_group["reason"]
    assert sum(g["count"] for g in groups["(undecodable)"]) == 2  # one group per reason
    assert {g["origin"] for gs in groups.values() for g in gs} == {"beam-apply"}
    again = capa_dlq(topic, lake, "list", "--json")
    assert json_lines(again.stdout) == json_lines(listed.stdout)  # nothing was consumed
    table = capa_dlq(topic, lake, "list")
    assert table.returncode == 0 and WIDGETS in table.stdout and "7 dead letter(s)" in table.stderr

    one = widget_group["ids"][0]
    shown = capa_dlq(topic, lake, "show", one)
    assert shown.returncode == 0, shown.stderr
    assert "capa.dlq.origin: beam-apply" in shown.stdout and "changed type" in shown.stdout
    assert '"table": "widgets"' in shown.stdout and '"qty": 10' in shown.stdout
    poison_id = groups["(undecodable)"][0]["ids"][0]
    shown = capa_dlq(topic, lake, "show", poison_id, "--json")
    (detail,) = json_lines(shown.stdout)
    assert detail["decode_error"] and detail["events"] == []
    unknown = capa_dlq(topic, lake, "show", "0@99999")
    assert unknown.returncode == 2 and "0@99999" in unknown.stderr

    before_fix = capa_dlq(topic, lake, "replay", "--table", WIDGETS)
    assert before_fix.returncode == 3, before_fix.stderr
    outcomes = json_lines(before_fix.stdout)
    assert len(outcomes) == 5 and {o["outcome"] for o in outcomes} == {"still failing"}
    assert widget_rows(lake) == {0: True}

    migrate_qty_to_integer(lake)
    dry = capa_dlq(topic, lake, "replay", "--table", WIDGETS, "--dry-run")
    assert dry.returncode == 0 and widget_rows(lake) == {0: 1}

    first = capa_dlq(topic, lake, "replay", "--table", WIDGETS)
    assert first.returncode == 0, first.stderr
    assert {o["outcome"] for o in json_lines(first.stdout)} == {"replayed"}
    assert "5 rows written, 0 no-ops" in first.stderr
    expected = {0: 1, 1: 10, 2: 20, 3: 30, 4: 40, 5: 50}
    assert widget_rows(lake) == expected
    changelog = open_warehouse(f"local:{lake}").row_count(WIDGETS + "_changelog")

    second = capa_dlq(topic, lake, "replay")  # everything: the widgets again, and the poison
    assert second.returncode == 3, second.stderr
    by_outcome: dict[str, list[str]] = {}
    for outcome in json_lines(second.stdout):
        by_outcome.setdefault(outcome["outcome"], []).append(outcome["id"])
    assert len(by_outcome["replayed"]) == 5 and len(by_outcome["still failing"]) == 2
    assert "0 rows written, 5 no-ops" in second.stderr
    assert widget_rows(lake) == expected
    assert open_warehouse(f"local:{lake}").row_count(WIDGETS + "_changelog") == changelog

    after = capa_dlq(topic, lake, "list", "--json")
    assert sum(g["count"] for g in json_lines(after.stdout)) == 7  # all still on the topic
