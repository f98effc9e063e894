"""Writing buffers to the online store: Feast's ``write_to_online_store`` (SQLite), or
Redis in Feast's layout with a compare-and-set per entity, so an older write never
overwrites a newer one."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from feature_repo.stream.buffers import CARD_SPEC, BufferSpec, Entry


class RecentWriter:
    """Writes per-entity buffers into one online store."""

    def write(self, buffers: dict[int, list[Entry]], base: dict[int, list[Entry]]) -> list[int]:
        """Write each card's new buffer; returns the cards whose stored buffer changed since
        ``base`` was read (to merge again)."""
        raise NotImplementedError


class FeastRecentWriter(RecentWriter):
    """Through Feast's ``write_to_online_store`` (the embedded SQLite store)."""

    def __init__(self, store, spec: BufferSpec = CARD_SPEC) -> None:
        self.store = store
        self.spec = spec

    def write(self, buffers: dict[int, list[Entry]], base: dict[int, list[Entry]]) -> list[int]:
        if not buffers:
            return []
        rows = [_row(self.spec, entity, entries) for entity, entries in buffers.items()]
        self.store.write_to_online_store(self.spec.view, pd.DataFrame(rows))
        return []


def _row(spec: BufferSpec, entity: int, entries: list[Entry]) -> dict:
    row = {
        spec.join_key: entity,
        "event_timestamp": datetime.fromtimestamp(entries[-1][0] / 1000, tz=UTC),
    }
    for k, (name, _kind) in enumerate(spec.features):
        row[name] = [e[k] for e in entries]
    return row


# KEYS[1]: the card's hash. ARGV[1]: the ts field; ARGV[2]: the ts the merge started from
# ("" for none); then field/value pairs. Replace only if nobody wrote in between.
_CAS_SCRIPT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""


class RedisRecentWriter(RecentWriter):
    """Pipelined compare-and-set writes in Feast's Redis layout."""

    def __init__(self, client, project: str, spec: BufferSpec = CARD_SPEC) -> None:
        from feast.infra.online_stores.helpers import _mmh3, _redis_key

        self.client = client
        self.project = project
        self.spec = spec
        self._redis_key = _redis_key
        self._fields = {name: _mmh3(f"{spec.view}:{name}") for name, _kind in spec.features}
        self._ts_field = f"_ts:{spec.view}"
        self._cas = client.register_script(_CAS_SCRIPT)

    def _key(self, entity: int) -> bytes:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        return self._redis_key(
            self.project,
            EntityKey(join_keys=[self.spec.join_key], entity_values=[Value(int64_val=entity)]),
        )

    def _ts(self, entries: list[Entry]) -> bytes:
        from google.protobuf.timestamp_pb2 import Timestamp

        if not entries:
            return b""
        ts = Timestamp()
        ts.FromMilliseconds(entries[-1][0])
        return ts.SerializeToString()

    def write(self, buffers: dict[int, list[Entry]], base: dict[int, list[Entry]]) -> list[int]:
        return self._write_through(self.client, buffers, base)

    def _write_through(self, client, buffers, base) -> list[int]:
        """One pipeline on ``client`` of a compare-and-set per card; the cards that changed
        under the merge."""
        from feast.protos.feast.types.Value_pb2 import FloatList, Int64List, StringList, Value

        def proto(kind: str, items: list) -> Value:
            if kind == "int64_list":
                return Value(int64_list_val=Int64List(val=items))
            if kind == "float32_list":
                return Value(float_list_val=FloatList(val=items))
            return Value(string_list_val=StringList(val=items))

        cards = list(buffers)
        pipe = client.pipeline(transaction=False)
        for card in cards:
            entries = buffers[card]
            values = {
                name: proto(kind, [e[k] for e in entries])
                for k, (name, kind) in enumerate(self.spec.features)
            }
            args: list[bytes | str] = [
                self._ts_field,
                self._ts(base.get(card, [])),
                self._ts_field,
                self._ts(entries),
            ]
            for name, value in values.items():
                args += [self._fields[name], value.SerializeToString()]
            self._cas(keys=[self._key(card)], args=args, client=pipe)
        results = pipe.execute()
        return [card for card, ok in zip(cards, results, strict=True) if not ok]


class RedisClusterRecentWriter(RedisRecentWriter):
    """The same compare-and-set on a Redis Cluster: a script's key must be on the node it
    runs on, and redis-py's cluster pipeline refuses scripts, so the cards are grouped by the
    node holding their slot and each group is one plain pipeline to that node."""

    def write(self, buffers: dict[int, list[Entry]], base: dict[int, list[Entry]]) -> list[int]:
        by_node: dict[str, tuple[object, dict[int, list[Entry]]]] = {}
        for card, entries in buffers.items():
            node = self.client.get_node_from_key(self._key(card))
            by_node.setdefault(node.name, (node, {}))[1][card] = entries
        changed = []
        for node, group in by_node.values():
            connection = self.client.get_redis_connection(node)
            changed += self._write_through(connection, group, base)
        return changed


def writer_for(settings, store, spec: BufferSpec = CARD_SPEC) -> RecentWriter:
    """The buffer writer (``card_recent`` by default) for the configured store."""
    from python_backend.feast_layout import PROJECT

    if settings.kind == "redis":
        import redis

        return RedisRecentWriter(redis.Redis.from_url(settings.redis_url), PROJECT, spec)
    if settings.kind == "redis_cluster":
        from redis.cluster import RedisCluster

        return RedisClusterRecentWriter(RedisCluster.from_url(settings.redis_url), PROJECT, spec)
    return FeastRecentWriter(store, spec)


class MemoryWriter(RecentWriter):
    """The buffers in a dict: the consumer's machinery without a store's cost."""

    def __init__(self) -> None:
        self.buffers: dict[int, list[Entry]] = {}

    def read(self, entities: list[int]) -> dict[int, list[Entry]]:
        return {e: list(self.buffers.get(e, [])) for e in entities}

    def write(self, buffers, base) -> list[int]:
        self.buffers.update(buffers)
        return []
