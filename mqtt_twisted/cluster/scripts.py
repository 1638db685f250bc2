"""The Lua scripts each node loads into Redis: every change of shared state is one script,
so the change and the event announcing it happen together, in one order for all nodes.

Scripts run with ``EVALSHA`` (Redis 7 and Valkey). Fields of published events are
separated by a zero byte, which MQTT strings never contain [MQTT-1.5.4-2].
"""

from __future__ import annotations

from typing import NamedTuple


class Keys(NamedTuple):
    """Key and channel names under one prefix (``--cluster-prefix``)."""

    prefix: str

    @property
    def nodes(self) -> str:
        return self.prefix + "nodes"

    @property
    def all(self) -> str:
        """The channel every node listens to: route and retained events."""
        return self.prefix + "all"

    @property
    def node_channels(self) -> str:
        return self.prefix + "n:"

    @property
    def retained(self) -> str:
        return self.prefix + "retained"

    @property
    def retained_seq(self) -> str:
        return self.prefix + "retained-seq"

    def channel(self, node: str) -> str:
        return self.prefix + "n:" + node

    def lease(self, node: str) -> str:
        return self.prefix + "node:" + node

    def routes(self, node: str) -> str:
        return self.prefix + "routes:" + node

    def wills(self, node: str) -> str:
        return self.prefix + "wills:" + node

    def stats(self, node: str) -> str:
        return self.prefix + "stats:" + node

    def client(self, client_id: str) -> str:
        return self.prefix + "cid:" + client_id


#: KEYS routes, all; ARGV kind (S|U), node, filter. Returns the node's new event number.
ROUTE = """
local seq = redis.call('HINCRBY', KEYS[1], '', 1)
if ARGV[1] == 'S' then
  redis.call('HSET', KEYS[1], ARGV[3], '1')
else
  redis.call('HDEL', KEYS[1], ARGV[3])
end
redis.call('PUBLISH', KEYS[2], ARGV[1] .. seq .. '\\0' .. ARGV[2] .. '\\0' .. ARGV[3])
return seq
"""

#: KEYS routes, all; ARGV node, filters... Replaces the node's routes; announces ``Y``.
REWRITE = """
local seq = redis.call('HINCRBY', KEYS[1], '', 1)
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if field ~= '' then redis.call('HDEL', KEYS[1], field) end
end
for i = 2, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], '1') end
redis.call('PUBLISH', KEYS[2], 'Y' .. seq .. '\\0' .. ARGV[1] .. '\\0')
return seq
"""

#: KEYS retained, retained-seq, all; ARGV topic, packed message ('' clears it).
RETAIN = """
local seq = redis.call('INCR', KEYS[2])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('PUBLISH', KEYS[3], 'R' .. seq .. '\\0' .. ARGV[1] .. '\\0' .. ARGV[2])
return seq
"""

#: KEYS retained, retained-seq. Returns {seq, {topic, value, ...}} at one instant.
RETAINED_SNAPSHOT = """
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
"""

#: KEYS client, wills of this node; ARGV node, client id, packed will or '', channel prefix.
#: Takes the client id (a new claim number); tells its previous node with a kick.
CLAIM = """
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local old = redis.call('HGET', KEYS[1], 'node')
redis.call('HSET', KEYS[1], 'node', ARGV[1])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[2], epoch .. '\\0' .. ARGV[3])
else
  redis.call('HDEL', KEYS[2], ARGV[2])
end
if old and old ~= ARGV[1] then
  redis.call('PUBLISH', ARGV[4] .. old, 'K' .. epoch .. '\\0' .. ARGV[2])
end
return epoch
"""

#: KEYS wills of this node; ARGV client id, claim number: the will of that claim goes.
DROP_WILL = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value and string.sub(value, 1, #ARGV[2] + 1) == ARGV[2] .. '\\0' then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

#: KEYS client; ARGV node, claim number: the client id is free unless claimed since.
RELEASE = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
return 0
"""

#: KEYS lease, nodes; ARGV node, lease ms, 'join' or 'renew'. Returns 0 when a renewing
#: node finds it was declared dead meanwhile (its clients' wills are gone: start over).
HEARTBEAT = """
local member = redis.call('SISMEMBER', KEYS[2], ARGV[1])
if member == 0 and ARGV[3] == 'renew' then return 0 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

#: KEYS nodes; ARGV prefix, this node. Nodes whose lease expired leave the cluster: their
#: routes go (announced with ``X``) and their wills are returned, once, to the one caller
#: that removed them. Returns {node, {client, will, ...}, ...}. This node's own wills
#: (left by clients dropped when it lost Redis) are taken the same way with ARGV[3] = '1'.
REAP = """
local out = {}
local function reap(node)
  local wills = redis.call('HGETALL', ARGV[1] .. 'wills:' .. node)
  redis.call('DEL', ARGV[1] .. 'wills:' .. node)
  table.insert(out, node)
  table.insert(out, wills)
end
if ARGV[3] == '1' then
  reap(ARGV[2])
  return out
end
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 0 then
    redis.call('SREM', KEYS[1], node)
    redis.call('DEL', ARGV[1] .. 'routes:' .. node, ARGV[1] .. 'stats:' .. node)
    redis.call('PUBLISH', ARGV[1] .. 'all', 'X0\\0' .. node .. '\\0')
    reap(node)
  end
end
return out
"""

ALL = {
    "route": ROUTE,
    "rewrite": REWRITE,
    "retain": RETAIN,
    "retained_snapshot": RETAINED_SNAPSHOT,
    "claim": CLAIM,
    "drop_will": DROP_WILL,
    "release": RELEASE,
    "heartbeat": HEARTBEAT,
    "reap": REAP,
}
