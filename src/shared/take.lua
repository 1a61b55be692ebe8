-- One take of the shared upstream budget, atomically, on Redis's clock.
--
-- KEYS[1] the profile's call log: a sorted set of call times (ms), one member per call
-- KEYS[2] the profile's gate: a hash of what the upstream said and of the probe state
-- KEYS[3] the caller's quota log (a sorted set like KEYS[1]); unused when ARGV[5] is 0
-- ARGV[1] limit: calls in any window     ARGV[2] window (ms)     ARGV[3] hop margin (ms)
-- ARGV[4] this call's member (unique)    ARGV[5] caller quota (0: none)
-- ARGV[6] quota window (ms)              ARGV[7] probe lease (ms)
-- ARGV[8] an epoch for a gate created now ARGV[9] how long idle state is kept (ms)
--
-- Returns {granted, reason, wait_ms, remaining, reset_in_ms, seq, epoch, probe,
--          quota_remaining, quota_reset_in_ms, now_ms}. A denial writes nothing to the logs.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local limit = tonumber(ARGV[1])
-- A call stays counted a margin longer than the window: its arrival upstream may lag.
local span = tonumber(ARGV[2]) + tonumber(ARGV[3])
local quota = tonumber(ARGV[5])
local quota_window = tonumber(ARGV[6])
local log, gate, quota_log = KEYS[1], KEYS[2], KEYS[3]

if redis.call('EXISTS', gate) == 0 then
  -- Nothing is known: a first start, or Redis came back empty. Calls of the last window
  -- (made before) are unknown, so probe (one call at a time) until the upstream says where
  -- the budget stands, or until a whole span has passed and the log has seen every call.
  redis.call('HSET', gate, 'epoch', ARGV[8], 'issued', 0, 'probe_until', now + span)
end
local g = redis.call('HMGET', gate, 'closed_until', 'cap', 'cap_reset', 'probe_until',
  'lease_until', 'epoch')
local closed_until = tonumber(g[1]) or 0
local cap = tonumber(g[2])
local cap_reset = tonumber(g[3]) or 0
local probe_until = tonumber(g[4]) or 0
local lease_until = tonumber(g[5]) or 0
local epoch = g[6] or ''
if cap_reset <= now then cap = nil end

local function deny(reason, wait)
  return {0, reason, wait, 0, wait, -1, epoch, 0, 0, 0, now}
end

-- The upstream's own word first: a 429 or a spent upstream window closes the gate.
if closed_until > now then return deny('closed', closed_until - now) end
if cap and cap <= 0 then return deny('closed', cap_reset - now) end

redis.call('ZREMRANGEBYSCORE', log, '-inf', now - span)
local count = redis.call('ZCARD', log)
if count >= limit then
  local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  return deny('budget', tonumber(oldest[2]) + span - now)
end

local quota_count = 0
if quota > 0 then
  redis.call('ZREMRANGEBYSCORE', quota_log, '-inf', now - quota_window)
  quota_count = redis.call('ZCARD', quota_log)
  if quota_count >= quota then
    local oldest = redis.call('ZRANGE', quota_log, 0, 0, 'WITHSCORES')
    return deny('quota', tonumber(oldest[2]) + quota_window - now)
  end
end

local probe = 0
if probe_until > now then
  if lease_until > now then
    -- The probe out there has not answered yet: ask again soon.
    return deny('probe', math.min(lease_until - now, 100))
  end
  probe = 1
  redis.call('HSET', gate, 'lease_until', now + tonumber(ARGV[7]))
end

redis.call('ZADD', log, now, ARGV[4])
redis.call('PEXPIRE', log, span)
local quota_remaining, quota_reset = 0, 0
if quota > 0 then
  redis.call('ZADD', quota_log, now, ARGV[4])
  redis.call('PEXPIRE', quota_log, quota_window)
  quota_remaining = quota - quota_count - 1
  quota_reset = quota_window
  if quota_remaining == 0 then
    local oldest = redis.call('ZRANGE', quota_log, 0, 0, 'WITHSCORES')
    quota_reset = tonumber(oldest[2]) + quota_window - now
  end
end
local remaining = limit - count - 1
local reset = span
if cap then
  redis.call('HINCRBY', gate, 'cap', -1)
  if cap - 1 < remaining then
    remaining = cap - 1
    reset = math.max(reset, cap_reset - now)
  end
end
if remaining == 0 and count + 1 >= limit then
  local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  reset = tonumber(oldest[2]) + span - now
end
if probe == 1 then remaining = 0 end
local seq = redis.call('HINCRBY', gate, 'issued', 1) - 1
redis.call('PEXPIRE', gate, tonumber(ARGV[9]))
return {1, 'granted', 0, remaining, reset, seq, epoch, probe, quota_remaining, quota_reset, now}
