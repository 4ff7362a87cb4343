"""The Lua scripts behind spend, budgets and the ledger: each change is one atomic script.

Why scripts: a booking must add the spend, release the request's reservation, append the ledger
entry and set the idempotency marker together, or not at all, so that a replay after an outage
(or a retried pipeline) can never count a request twice; an admission must check every budget
and reserve in all of them without another request slipping in between.

Amounts are integer micro-dollars passed as strings (see `periods`).
"""

from __future__ import annotations

# KEYS[1] booked marker  KEYS[2] hold  KEYS[3] holds zset  KEYS[4] ledger stream
# KEYS[5..4+n] spend counters, in (day, month) pairs
# ARGV[1] marker ('b' booked, 'u' unbooked)  ARGV[2] marker TTL (s)  ARGV[3] booking id
# ARGV[4] cost (micro-dollars)  ARGV[5] stream MAXLEN (approximate)
# ARGV[6] EXPIREAT of the day counters  ARGV[7] EXPIREAT of the month counters
# ARGV[8] the ledger entry's field/value pairs as one JSON array of strings (one argument
# instead of ~36: encoding each argument is most of a booking's client-side CPU)
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
if tonumber(ARGV[4]) > 0 then
  for i = 5, #KEYS do
    redis.call('INCRBY', KEYS[i], ARGV[4])
    redis.call('EXPIREAT', KEYS[i], ARGV[6 + (i - 5) % 2])
  end
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', unpack(cjson.decode(ARGV[8])))
return result
"""

# KEYS[1] hold  KEYS[2] holds zset  then per budget slot i: KEYS[1+2i] spend, KEYS[2+2i] reserved
# ARGV[1] estimate (micro)  ARGV[2] floor (micro, the least a request reserves)
# ARGV[3] hold deadline (ms, the zset score)  ARGV[4] hold TTL (s)  ARGV[5] booking id
# ARGV[6] n  ARGV[7..6+n] limits (micro)  ARGV[7+n..6+2n] EXPIREAT of the reserved counters
# Admission rule: the reservation r (the estimate) must fit in every slot:
# spent + held + r <= limit. When it does not fit a slot where nothing is in flight (held == 0),
# the floor is reserved instead if that fits: an estimate learnt from one expensive request must
# not lock a budget until the period resets. So at every admission spent + held + r <= limit.
# Returns {0} reserved in every slot, or {i, spent, held} for the first slot that refuses.
RESERVE = """
local amount = tonumber(ARGV[1])
local floor = tonumber(ARGV[2])
local n = tonumber(ARGV[6])
local spent = {}
local held = {}
for i = 1, n do
  spent[i] = tonumber(redis.call('GET', KEYS[1 + 2 * i]) or '0')
  held[i] = tonumber(redis.call('GET', KEYS[2 + 2 * i]) or '0')
  if spent[i] + held[i] + amount > tonumber(ARGV[6 + i]) then
    if held[i] > 0 or spent[i] + floor > tonumber(ARGV[6 + i]) then
      return {i, spent[i], held[i]}
    end
    amount = floor
  end
end
if amount < tonumber(ARGV[1]) then
  -- fell back to the floor: every slot must take it (it fits wherever the estimate did)
  for i = 1, n do
    if spent[i] + held[i] + amount > tonumber(ARGV[6 + i]) then
      return {i, spent[i], held[i]}
    end
  end
end
if amount > 0 then
  for i = 1, n do
    redis.call('INCRBY', KEYS[2 + 2 * i], amount)
    redis.call('EXPIREAT', KEYS[2 + 2 * i], ARGV[6 + n + i])
    redis.call('HSET', KEYS[1], KEYS[2 + 2 * i], amount)
  end
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
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
