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

    def session(self, client_id: str) -> str:
        """A persistent session's hash: record, subscriptions, deliveries, QoS 2 ids."""
        return self.prefix + "s:" + client_id

    def hosted(self, node: str) -> str:
        """The set of client ids whose persistent sessions ``node`` holds."""
        return self.prefix + "sessions:" + node

    @property
    def psubs(self) -> str:
        return self.prefix + "psubs"

    @property
    def psubs_seq(self) -> str:
        return self.prefix + "psubs-seq"


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

#: KEYS hash, seq. Returns {seq, {field, value, ...}} at one instant (retained messages,
#: persistent sessions' subscriptions).
SNAPSHOT = """
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
"""

#: KEYS client, wills of this node, session; ARGV node, client id, packed will or '', prefix.
#: Takes the client id (a new claim number) and tells its previous node with a kick.
#: Returns {claim number, previous node or '', whether that node is alive, whether the
#: client has a persistent session stored}.
CLAIM = """
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local old = redis.call('HGET', KEYS[1], 'node')
redis.call('HSET', KEYS[1], 'node', ARGV[1])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[2], epoch .. '\\0' .. ARGV[3])
else
  redis.call('HDEL', KEYS[2], ARGV[2])
end
local alive = 0
if old and old ~= ARGV[1] then
  redis.call('SREM', ARGV[4] .. 'sessions:' .. old, ARGV[2])
  alive = redis.call('EXISTS', ARGV[4] .. 'node:' .. old)
  redis.call('PUBLISH', ARGV[4] .. 'n:' .. old, 'K' .. epoch .. '\\0' .. ARGV[2] .. '\\0' .. ARGV[1])
end
local stored = redis.call('HEXISTS', KEYS[3], 's')
if stored == 1 then redis.call('SADD', ARGV[4] .. 'sessions:' .. ARGV[1], ARGV[2]) end
return {epoch, old or '', alive, stored}
"""

#: KEYS client, session; ARGV node, client id, prefix, dead node. A dead node's persistent
#: session goes to this node unless someone claimed it since. Returns the claim number or 0.
ADOPT = """
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[4] or redis.call('HEXISTS', KEYS[2], 's') == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'node', ARGV[1])
redis.call('SADD', ARGV[3] .. 'sessions:' .. ARGV[1], ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'epoch', 1)
"""

#: ARGV prefix, packed message, then per persistent session: client id, delivery head,
#: QoS. Stores each QoS 1/2 delivery in the session's hash under the session's next seq,
#: and rings the session's node (QoS 0 only rings). Sessions that ended are skipped.
ENQUEUE = """
local p, message = ARGV[1], ARGV[2]
for i = 3, #ARGV, 3 do
  local cid, head = ARGV[i], ARGV[i + 1]
  local key = p .. 's:' .. cid
  if redis.call('HEXISTS', key, 's') == 1 then
    local seq = 0
    if ARGV[i + 2] ~= '0' then
      seq = redis.call('HINCRBY', key, 'seq', 1)
      redis.call('HSET', key, 'd:' .. seq, head .. message)
    end
    local node = redis.call('HGET', p .. 'cid:' .. cid, 'node')
    if node then
      redis.call('PUBLISH', p .. 'n:' .. node, 'B' .. seq .. '\\0' .. cid .. '\\0' .. head .. message)
    end
  end
end
return 1
"""

#: KEYS psubs, psubs-seq, all; ARGV client id, filter, packed options ('' removes it).
SESSION_ROUTE = """
local seq = redis.call('INCR', KEYS[2])
local field = ARGV[1] .. '\\0' .. ARGV[2]
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], field)
  redis.call('PUBLISH', KEYS[3], 'p' .. seq .. '\\0' .. ARGV[1] .. '\\0' .. ARGV[2])
else
  redis.call('HSET', KEYS[1], field, ARGV[3])
  redis.call('PUBLISH', KEYS[3], 'P' .. seq .. '\\0' .. ARGV[1] .. '\\0' .. ARGV[3] .. ARGV[2])
end
return seq
"""

#: KEYS wills of this node; ARGV client id, claim number: the will of that claim goes.
DROP_WILL = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value and string.sub(value, 1, #ARGV[2] + 1) == ARGV[2] .. '\\0' then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

#: KEYS client, hosted sessions of this node; ARGV node, claim number, client id: the
#: client id is free unless claimed since.
RELEASE = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[3])
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

#: KEYS nodes; ARGV prefix, this node, '1' for this node itself. Nodes whose lease expired
#: leave the cluster: their routes go (announced with ``X``); their wills and the client
#: ids of their persistent sessions are returned, once, to the one caller that removed
#: them: {node, {client, will, ...}, {client, ...}, ...}. A node takes its own (wills of
#: clients dropped when it lost Redis) the same way.
REAP = """
local out = {}
local function reap(node)
  local wills = redis.call('HGETALL', ARGV[1] .. 'wills:' .. node)
  redis.call('DEL', ARGV[1] .. 'wills:' .. node)
  table.insert(out, node)
  table.insert(out, wills)
  if node == ARGV[2] then
    table.insert(out, {})
  else
    table.insert(out, redis.call('SMEMBERS', ARGV[1] .. 'sessions:' .. node))
    redis.call('DEL', ARGV[1] .. 'sessions:' .. node)
  end
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
    "snapshot": SNAPSHOT,
    "claim": CLAIM,
    "adopt": ADOPT,
    "enqueue": ENQUEUE,
    "session_route": SESSION_ROUTE,
    "drop_will": DROP_WILL,
    "release": RELEASE,
    "heartbeat": HEARTBEAT,
    "reap": REAP,
}
