"""The Lua scripts, called with EVALSHA and loaded on NOSCRIPT (never SCRIPT EXISTS).

Every script declares all keys it touches in KEYS (cluster-safe) and uses a `#!lua`
shebang (Redis >= 7): a script that may write is then refused *before it runs* when the
server is out of memory, so an update is never half-applied by an OOM in the middle.
Scripts answer with arrays of integers and bulk strings only, which read the same in
RESP2 and RESP3.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: bytes
    sha: bytes

    @classmethod
    def of(cls, name: str, source: str) -> Script:
        body = source.strip().encode()
        return cls(name, body, hashlib.sha1(body).hexdigest().encode())


# KEYS = value1, lock1, value2, lock2, ...   ARGV = token, lock_ttl_ms
# Reply: one entry per pair: {1, value} / {1} (acquired; value or absent) or {0} (busy).
# All reads happen before any write, so a WRONGTYPE error aborts with nothing written.
# A lock already holding our token counts as acquired: a retried acquire whose first
# reply was lost is harmless.
ACQUIRE = Script.of(
    "acquire",
    """
#!lua
local n = #KEYS / 2
local holders, values = {}, {}
for i = 1, n do
  holders[i] = redis.call('GET', KEYS[2 * i])
  values[i] = redis.call('GET', KEYS[2 * i - 1])
end
local out = {}
for i = 1, n do
  local holder = holders[i]
  if holder and holder ~= ARGV[1] then
    out[i] = {0}
  else
    redis.call('SET', KEYS[2 * i], ARGV[1], 'PX', ARGV[2])
    if values[i] then out[i] = {1, values[i]} else out[i] = {1} end
  end
end
return out
""",
)

# KEYS = value1, lock1, ...   ARGV = token, then per key: mode, data, ttl_ms
# mode: 'px' (SET PX ttl), 'keep' (SET KEEPTTL), 'none' (write nothing, just unlock).
# Writes only if every lock still holds the token: all or nothing. Otherwise releases the
# locks that are still ours and returns the 1-based indices of the lost ones.
COMMIT = Script.of(
    "commit",
    """
#!lua
local n = #KEYS / 2
local lost = {}
for i = 1, n do
  if redis.call('GET', KEYS[2 * i]) ~= ARGV[1] then lost[#lost + 1] = i end
end
if #lost > 0 then
  for i = 1, n do
    if redis.call('GET', KEYS[2 * i]) == ARGV[1] then redis.call('DEL', KEYS[2 * i]) end
  end
  return lost
end
for i = 1, n do
  local mode = ARGV[3 * i - 1]
  if mode == 'px' then
    redis.call('SET', KEYS[2 * i - 1], ARGV[3 * i], 'PX', ARGV[3 * i + 1])
  elseif mode == 'keep' then
    redis.call('SET', KEYS[2 * i - 1], ARGV[3 * i], 'KEEPTTL')
  end
  redis.call('DEL', KEYS[2 * i])
end
return {}
""",
)

# KEYS = lock keys   ARGV = token. Deletes the locks that still hold the token.
# allow-oom: releasing must work exactly when the server is out of memory.
RELEASE = Script.of(
    "release",
    """
#!lua flags=allow-oom
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
""",
)

# KEYS = value, lock   ARGV = item JSON
# Appends one JSON item to the JSON array stored at KEYS[1] (creating `[item]`), keeping
# its TTL. Refuses while an update holds the lock, so it cannot be lost under a commit.
# Reply: {1} appended, {0} lock busy, {-1} the stored value is not a JSON array.
APPEND = Script.of(
    "append",
    """
#!lua
if redis.call('EXISTS', KEYS[2]) == 1 then return {0} end
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], '[' .. ARGV[1] .. ']')
  return {1}
end
local body = string.match(current, '^%s*%[(.*)%]%s*$')
if not body then return {-1} end
if string.match(body, '^%s*$') then
  redis.call('SET', KEYS[1], '[' .. ARGV[1] .. ']', 'KEEPTTL')
else
  redis.call('SET', KEYS[1], '[' .. body .. ',' .. ARGV[1] .. ']', 'KEEPTTL')
end
return {1}
""",
)

SCRIPTS_BY_SHA: dict[bytes, Script] = {s.sha: s for s in (ACQUIRE, COMMIT, RELEASE, APPEND)}
