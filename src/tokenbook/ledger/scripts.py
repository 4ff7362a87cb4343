"""The Lua scripts behind spend, budgets and the ledger: each change is one atomic script.

Why scripts: a booking must add the spend, release the request's reservation, append the ledger
entry and set the idempotency marker together, or not at all, so that a replay after an outage
(or a retried pipeline) can never count a request twice; an admission must check every budget
and reserve in all of them without another request slipping in between.

Amounts are integer micro-dollars passed as strings (see `periods`).
"""

from __future__ import annotations

# A batch of bookings in one call: one EVALSHA per batch instead of one per booking (redis-py
# spent ~90 µs of tokenbook's CPU encoding each call's ~20 arguments and parsing its reply;
# one JSON argument for the whole batch costs ~5 µs a booking).
# KEYS[1] holds zset  KEYS[2] ledger stream
# ARGV[1] marker TTL (s)  ARGV[2] stream MAXLEN (approximate)
# ARGV[3] JSON array, one array per booking:
#   [marker ('b' booked, 'u' unbooked), booked-marker key, hold key, booking id,
#    cost (micro-dollars), EXPIREAT of day counters, EXPIREAT of month counters,
#    [spend counter keys, in (day, month) pairs], [ledger entry field/value pairs]]
# Returns {codes, errors...}: ``codes`` has one character per booking, in order: '1' booked;
# '2' booked although an 'unbooked' verdict was recorded first (the meter's booking arrived
# after the unbooked timeout: the real numbers win, the ledger holds both); '0' duplicate:
# nothing was written; 'E' Redis refused this booking (e.g. WRONGTYPE), its message is the next
# of ``errors``; the other bookings still count. (One string, not an array of integers: parsing
# a reply element by element was a third of the writer's CPU in redis-py.)
# What a refused booking wrote before the error stays written (a script has no rollback), as
# it did with one call per booking.
BOOK = """
local ttl, maxlen = ARGV[1], ARGV[2]
local function book(e)
  local marker, booked, hold_key, id, cost = e[1], e[2], e[3], e[4], tonumber(e[5])
  local prev = redis.call('GET', booked)
  local result = 1
  if prev then
    if prev == 'u' and marker == 'b' then
      result = 2
    else
      return 0
    end
  end
  redis.call('SET', booked, marker, 'EX', ttl)
  local hold = redis.call('HGETALL', hold_key)
  for i = 1, #hold, 2 do
    if redis.call('DECRBY', hold[i], hold[i + 1]) <= 0 then
      redis.call('DEL', hold[i])
    end
  end
  if #hold > 0 then
    redis.call('DEL', hold_key)
  end
  redis.call('ZREM', KEYS[1], id)
  if cost > 0 then
    local spend = e[8]
    for i = 1, #spend do
      redis.call('INCRBY', spend[i], e[5])
      redis.call('EXPIREAT', spend[i], e[6 + (i - 1) % 2])
    end
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(e[9]))
  return result
end
local codes, out = {}, {''}
for n, e in ipairs(cjson.decode(ARGV[3])) do
  local ok, res = pcall(book, e)
  if ok then
    codes[n] = tostring(res)
  else
    codes[n] = 'E'
    out[#out + 1] = tostring(type(res) == 'table' and res.err or res)
  end
end
out[1] = table.concat(codes)
return out
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
