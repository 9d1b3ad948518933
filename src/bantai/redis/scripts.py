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
    """A Lua script: its name, its source and the SHA1 EVALSHA calls it by."""

    name: str
    source: bytes
    sha: bytes

    @classmethod
    def of(cls, name: str, source: str) -> Script:
        """A script from its source (stripped; the SHA1 computed here)."""
        body = source.strip().encode()
        return cls(name, body, hashlib.sha1(body).hexdigest().encode())


# KEYS = value1, lock1, value2, lock2, ...   ARGV = token, lock_ttl_ms
# All or nothing: takes every lock only if none is held by someone else. Reply, one entry
# per pair: {1, value} / {1} (locked; value or absent) when all were taken; otherwise
# {0} (busy) / {2} (free, not taken) and no lock was taken. Never holding some locks while
# waiting for others is what makes overlapping multi-key updates deadlock-free.
# All reads happen before any write, so a WRONGTYPE error aborts with nothing written.
# A lock already holding our token counts as free: a resent acquire whose first reply was
# lost is harmless.
ACQUIRE = Script.of(
    "acquire",
    """
#!lua
local n = #KEYS / 2
local holders, values = {}, {}
local busy = false
for i = 1, n do
  local holder = redis.call('GET', KEYS[2 * i])
  if holder and holder ~= ARGV[1] then busy = true end
  holders[i] = holder
  values[i] = redis.call('GET', KEYS[2 * i - 1])
end
local out = {}
for i = 1, n do
  if busy then
    if holders[i] and holders[i] ~= ARGV[1] then out[i] = {0} else out[i] = {2} end
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
# Reply: {1} appended, {0} lock busy, {-1} the stored value is not one JSON array.
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
-- One JSON array, not merely text between brackets: the original's append can leave
-- '["a1","a2"]["b1"]', which must not be extended.
local ok = pcall(cjson.decode, current)
if not ok then return {-1} end
if string.match(body, '^%s*$') then
  redis.call('SET', KEYS[1], '[' .. ARGV[1] .. ']', 'KEEPTTL')
else
  redis.call('SET', KEYS[1], '[' .. body .. ',' .. ARGV[1] .. ']', 'KEEPTTL')
end
return {1}
""",
)

# KEYS[1] = the limiter's state key (for a fixed window: the window's key), KEYS[2] = its
# lock key — both built by the client (`ratelimit.algorithms.state_key` mapped through the
# key layout), so every key the script touches is declared (cluster-safe, also during a
# slot migration).
# ARGV = type, limit, period_ms, cost, now_ms (0: use server TIME), the window start the
# client assumed for KEYS[1] (fixed window; 0 otherwise)
# Atomic check-and-consume for the five limiters; mirrors bantai.ratelimit.algorithms
# .decide operation for operation (same double arithmetic, same order).
# Replies: {1, allowed, remaining, reset_at_ms, now_ms}; {0} while an update from the original's
# check+increment path holds the key's lock; {2, window start, now} when the client
# assumed another window than the server's clock says (it sends again with that key);
# {3, reason} when the stored state is not a valid rate-limit state (nothing written).
RATE_LIMIT = Script.of(
    "rate_limit",
    """
#!lua
local kind = ARGV[1]
local limit = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local start = math.floor(now / period) * period
if kind == 'fixed-window' and start ~= tonumber(ARGV[6]) then return {2, start, now} end
local key = KEYS[1]
if redis.call('EXISTS', KEYS[2]) == 1 then return {0} end
local raw = redis.call('GET', key)
local state = nil
-- The stored state is checked, never trusted: a planted {"count":-10} must not admit more.
local function count_ok(x)
  return type(x) == 'number' and x >= 0 and x == math.floor(x) and x <= 9007199254740991
end
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if not ok or type(decoded) ~= 'table' or type(decoded.type) ~= 'string' then
    return {3, 'not a rate-limit state (a JSON object with a type)'}
  end
  local t = decoded.type
  if t ~= 'fixed-window' and t ~= 'sliding-window' and t ~= 'token-bucket'
     and t ~= 'sliding-window-counter' and t ~= 'gcra' then
    return {3, 'unknown rate-limit state type'}
  end
  if t == kind then
    if kind == 'fixed-window' and not count_ok(decoded.count) then
      return {3, 'count must be a non-negative integer'}
    end
    if kind == 'sliding-window' then
      if type(decoded.timestamps) ~= 'table' then return {3, 'timestamps must be a list'} end
      for _, stamp in pairs(decoded.timestamps) do
        if not count_ok(stamp) then
          return {3, 'timestamps must be non-negative integers'}
        end
      end
    end
    if kind == 'token-bucket'
       and not (count_ok(decoded.remainingTokens) and count_ok(decoded.lastRefillAt)) then
      return {3, 'remainingTokens and lastRefillAt must be non-negative integers'}
    end
    if kind == 'sliding-window-counter' and not (count_ok(decoded.windowStart)
       and count_ok(decoded.previous) and count_ok(decoded.current)) then
      return {3, 'windowStart, previous and current must be non-negative integers'}
    end
    if kind == 'gcra' and not (type(decoded.tat) == 'number' and decoded.tat >= 0
       and decoded.tat < math.huge) then
      return {3, 'tat must be a non-negative number'}
    end
  end
  state = decoded
end
local function int(x) return string.format('%d', x) end

if kind == 'fixed-window' then
  local reset = start + period
  local count = 0
  if type(state) == 'table' and state.type == 'fixed-window' and tonumber(state.count) then
    count = state.count
  end
  if cost > limit or count + cost > limit then
    return {1, 0, math.max(0, limit - count), reset, now}
  end
  count = count + cost
  redis.call('SET', key, '{"type":"fixed-window","count":' .. int(count) .. '}', 'PX', period)
  return {1, 1, limit - count, reset, now}
end

if kind == 'sliding-window' then
  local valid = {}
  if type(state) == 'table' and state.type == 'sliding-window'
     and type(state.timestamps) == 'table' then
    for _, t in ipairs(state.timestamps) do
      if t > now - period then valid[#valid + 1] = t end
    end
  end
  local function oldest()
    local m = valid[1]
    for i = 2, #valid do if valid[i] < m then m = valid[i] end end
    return m
  end
  if cost > limit or #valid + cost > limit then
    local reset = now + period
    if #valid > 0 then reset = oldest() + period end
    return {1, 0, math.max(0, limit - #valid), reset, now}
  end
  for _ = 1, cost do valid[#valid + 1] = now end
  local parts = {}
  for i = 1, #valid do parts[i] = int(valid[i]) end
  redis.call('SET', key, '{"type":"sliding-window","timestamps":[' ..
             table.concat(parts, ',') .. ']}', 'PX', period)
  return {1, 1, limit - #valid, oldest() + period, now}
end

if kind == 'sliding-window-counter' then
  local previous, current = 0, 0
  if type(state) == 'table' and state.type == kind then
    if state.windowStart == start then
      previous, current = state.previous, state.current
    elseif state.windowStart == start - period then
      previous = state.current
    end
  end
  local weight = (period - (now - start)) / period
  local estimate = previous * weight + current
  if cost > limit or estimate + cost > limit then
    local room = limit - current - cost
    local reset = start + period
    if cost <= limit and room >= 0 then
      reset = start + math.ceil(period - room * period / previous)
    elseif cost <= limit then
      reset = start + period + math.ceil(period - (limit - cost) * period / current)
    end
    return {1, 0, math.max(0, math.floor(limit - estimate)), reset, now}
  end
  current = current + cost
  local remaining = math.max(0, math.floor(limit - (previous * weight + current)))
  redis.call('SET', key, '{"type":"sliding-window-counter","windowStart":' .. int(start) ..
             ',"previous":' .. int(previous) .. ',"current":' .. int(current) .. '}',
             'PX', 2 * period)
  return {1, 1, remaining, start + period, now}
end

if kind == 'gcra' then
  if limit == 0 then return {1, 0, 0, now + period, now} end
  local interval = period / limit
  local tat = now
  if type(state) == 'table' and state.type == kind then tat = math.max(state.tat, now) end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - period
  if cost > limit or now < allow_at then
    return {1, 0, math.max(0, math.floor((period - (tat - now)) / interval)),
            math.ceil(allow_at), now}
  end
  redis.call('SET', key, '{"type":"gcra","tat":' .. string.format('%.17g', new_tat) .. '}',
             'PX', math.max(1, math.ceil(new_tat - now)))
  return {1, 1, math.max(0, math.floor((period - (new_tat - now)) / interval)),
          math.ceil(new_tat), now}
end

-- token bucket: limit = capacity, period = time to refill from empty to full
if limit == 0 then return {1, 0, 0, now + period, now} end  -- holds nothing: always denied
local rate = limit / period
local tokens = limit
local last = now
if type(state) == 'table' and state.type == 'token-bucket'
   and tonumber(state.remainingTokens) and tonumber(state.lastRefillAt) then
  tokens = state.remainingTokens
  last = state.lastRefillAt
end
local elapsed = now - last
if elapsed > 0 then tokens = math.min(limit, tokens + elapsed * rate) end
if cost > limit or tokens < cost then
  return {1, 0, math.max(0, math.floor(tokens)), now + math.ceil((limit - tokens) / rate), now}
end
tokens = tokens - cost
local whole = math.floor(tokens)
local carried = math.floor((tokens - whole) / rate)
redis.call('SET', key, '{"type":"token-bucket","remainingTokens":' .. int(whole) ..
           ',"lastRefillAt":' .. int(now - carried) .. '}', 'PX', period)
return {1, 1, whole, now + math.ceil((limit - tokens) / rate), now}
""",
)

# KEYS = values   ARGV = ttl_ms, data1, data2, ...
# `set_many` with a TTL: every key written with PX, all or nothing (one script, refused
# before it runs when the server is out of memory). One command per slot group, so a
# cluster redirect (MOVED / ASK / TRYAGAIN) concerns one command, never half a MULTI.
SET_MANY = Script.of(
    "set_many",
    """
#!lua
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1]) end
return #KEYS
""",
)

SCRIPTS_BY_SHA: dict[bytes, Script] = {
    s.sha: s for s in (ACQUIRE, COMMIT, RELEASE, APPEND, RATE_LIMIT, SET_MANY)
}
