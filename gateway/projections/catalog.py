"""The catalogue projection, kept inside the append transaction of item events.

Keeping it inline (rather than in the asynchronous projector) means an item is recommendable the
moment its upsert is acknowledged, and a retired item is never served after its retire is
acknowledged by the process that retired it (others see it within `catalog_cache_seconds`:
`gateway.serving.catalog` reads the rows this writes, with their writing transaction).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from domain.events import ItemRetired, ItemUpserted
from gateway.store.api import StoredEvent
from gateway.store.postgres import Connection

UPSERT = """
INSERT INTO catalog_items (item_id, kind, attributes, vector, retired, global_position)
SELECT i, k, a::jsonb, CASE WHEN v = 'null' THEN NULL
                            ELSE ARRAY(SELECT jsonb_array_elements_text(v::jsonb)::float8) END,
       r, p
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::bigint[])
     AS t(i, k, a, v, r, p)
ON CONFLICT (item_id) DO UPDATE SET
    kind = EXCLUDED.kind, attributes = EXCLUDED.attributes, vector = EXCLUDED.vector,
    retired = EXCLUDED.retired, global_position = EXCLUDED.global_position, updated_at = now(),
    tx_id = pg_current_xact_id()::text::bigint
"""

RETIRE = """
UPDATE catalog_items SET retired = true, global_position = t.p, updated_at = now(),
    tx_id = pg_current_xact_id()::text::bigint
FROM unnest($1::text[], $2::bigint[]) AS t(i, p)
WHERE catalog_items.item_id = t.i
"""


class CatalogProjection:
    """Inline projection of ItemUpserted / ItemRetired into `catalog_items`."""

    event_types = frozenset({ItemUpserted.TYPE, ItemRetired.TYPE})

    async def apply(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        # Fold the batch to one final state per item: the last event for an item wins.
        upserts: dict[str, tuple[StoredEvent, bool]] = {}
        retires: dict[str, int] = {}
        for e in events:
            item_id = e.payload["item_id"]
            if e.event_type == ItemUpserted.TYPE:
                upserts[item_id] = (e, False)
                retires.pop(item_id, None)
            elif item_id in upserts:
                upserts[item_id] = (upserts[item_id][0], True)
            else:
                retires[item_id] = e.global_position
        if upserts:
            rows = [(e.payload, retired, e.global_position) for e, retired in upserts.values()]
            await conn.execute(
                UPSERT,
                [p["item_id"] for p, _, _ in rows],
                [p["kind"] for p, _, _ in rows],
                [orjson.dumps(p.get("attributes") or {}).decode() for p, _, _ in rows],
                [orjson.dumps(p.get("vector")).decode() for p, _, _ in rows],
                [r for _, r, _ in rows],
                [pos for _, _, pos in rows],
            )
        if retires:
            await conn.execute(RETIRE, list(retires), list(retires.values()))
