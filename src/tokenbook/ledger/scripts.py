"""The Lua scripts behind spend, budgets and the ledger: each change is one atomic script.

Why scripts: a booking must add the spend, release the request's reservation, append the ledger
entry and set the idempotency marker together, or not at all, so that a replay after an outage
(or a retried pipeline) can never count a request twice; an admission must check every budget
and reserve in all of them without another request slipping in between.

Amounts are integer micro-dollars passed as strings (see `periods`).
"""

from __future__ import annotations

# KEYS[1] booked marker  KEYS[2] hold  KEYS[3] holds zset  KEYS[4] ledger stream
# KEYS[5..4+n] spend counters
# ARGV[1] marker ('b' booked, 'u' unbooked)  ARGV[2] marker TTL (s)  ARGV[3] booking id
# ARGV[4] cost (micro-dollars)  ARGV[5] stream MAXLEN (approximate)  ARGV[6] n
# ARGV[7..6+n] EXPIREAT of each spend counter  ARGV[7+n..] ledger field/value pairs
# Returns 1 booked; 2 booked although an 'unbooked' verdict was recorded first (the meter's
# booking arrived after the unbooked timeout: the real numbers win, the ledger holds both);
# 0 duplicate: nothing was written.
BOOK = """
local prev = redis.call('GET', KEYS[1])
local result = 1
if prev then
  if prev == 'u' and ARGV[1] == 'b' then
    result = 2
  else
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local hold = redis.call('HGETALL', KEYS[2])
for i = 1, #hold, 2 do
  if redis.call('DECRBY', hold[i], hold[i + 1]) <= 0 then
    redis.call('DEL', hold[i])
  end
end
if #hold > 0 then
  redis.call('DEL', KEYS[2])
end
redis.call('ZREM', KEYS[3], ARGV[3])
local n = tonumber(ARGV[6])
if tonumber(ARGV[4]) > 0 then
  for i = 1, n do
    redis.call('INCRBY', KEYS[4 + i], ARGV[4])
    redis.call('EXPIREAT', KEYS[4 + i], ARGV[6 + i])
  end
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 7 + n))
return result
"""

# KEYS[1] hold  KEYS[2] holds zset  then per budget slot i: KEYS[1+2i] spend, KEYS[2+2i] reserved
# ARGV[1] amount (micro)  ARGV[2] hold deadline (ms, the zset score)  ARGV[3] hold TTL (s)
# ARGV[4] booking id  ARGV[5] n  ARGV[6..5+n] limits (micro)  ARGV[6+n..5+2n] EXPIREAT of the
# reserved counters.
# Admission rule per slot: refuse when spent + held >= limit, or when other requests hold
# reservations and spent + held + amount > limit. (With nothing in flight one request is let
# through even if its estimate exceeds what is left: otherwise an estimate above the remaining
# budget would lock the budget until the period resets.)
# Returns {0} reserved in every slot, or {i, spent, held} for the first slot that refuses.
RESERVE = """
local amount = tonumber(ARGV[1])
local n = tonumber(ARGV[5])
for i = 1, n do
  local spent = tonumber(redis.call('GET', KEYS[1 + 2 * i]) or '0')
  local held = tonumber(redis.call('GET', KEYS[2 + 2 * i]) or '0')
  local limit = tonumber(ARGV[5 + i])
  if spent + held >= limit or (held > 0 and spent + held + amount > limit) then
    return {i, spent, held}
  end
end
if amount > 0 then
  for i = 1, n do
    redis.call('INCRBY', KEYS[2 + 2 * i], ARGV[1])
    redis.call('EXPIREAT', KEYS[2 + 2 * i], ARGV[5 + n + i])
    redis.call('HSET', KEYS[1], KEYS[2 + 2 * i], ARGV[1])
  end
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
end
return {0}
"""

# KEYS[1] holds zset  ARGV[1] now (ms)  ARGV[2] at most this many  ARGV[3] hold key prefix
# Releases reservations whose deadline passed (their gate replica died before it could
# declare the request unbooked). Returns how many were released.
RELEASE_EXPIRED = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  local hk = ARGV[3] .. id
  local hold = redis.call('HGETALL', hk)
  for i = 1, #hold, 2 do
    if redis.call('DECRBY', hold[i], hold[i + 1]) <= 0 then
      redis.call('DEL', hold[i])
    end
  end
  redis.call('DEL', hk)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
"""

# KEYS[1] hash (budgets or suspended)  KEYS[2] control version
# ARGV[1] field  ARGV[2] value ('' deletes)  ARGV[3] control channel  ARGV[4] event
# Returns {version, 1 if the field existed before else 0}.
CONTROL_WRITE = """
local existed = redis.call('HEXISTS', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {v, existed}
"""

# KEYS[1] keyid index  ARGV[1] key hash prefix (``<p>key:``)  ARGV[2] registry events channel
# ARGV[3..] field/value pairs for the key's hash.
# Edits a key's budget fields and tells every replica's key cache to drop the entry.
# Returns the key hash, or false when no such key exists.
KEY_BUDGET = """
local h = redis.call('GET', KEYS[1])
if not h then
  return false
end
local k = ARGV[1] .. h
if redis.call('EXISTS', k) == 0 then
  return false
end
redis.call('HSET', k, unpack(ARGV, 3))
redis.call('PUBLISH', ARGV[2], '{"type":"changed","key_hash":"' .. h .. '"}')
return h
"""
