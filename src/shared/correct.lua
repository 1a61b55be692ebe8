-- The upstream's word on the budget, after one call, for every replica.
--
-- KEYS[1] the profile's gate (see take.lua)
-- ARGV[1] the call's epoch   ARGV[2] its sequence number   ARGV[3] x-ratelimit-remaining (-1: none)
-- ARGV[4] ms until x-ratelimit-reset (-1: none)   ARGV[5] ms a 429 closes the gate (-1: no 429)
-- ARGV[6] 1 if the call was a probe   ARGV[7] an epoch for a gate created now
-- ARGV[8] how long idle state is kept (ms)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local gate = KEYS[1]
local remaining, reset_in, throttled = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local counted = remaining >= 0 and reset_in >= 0
if not counted and throttled < 0 then
  -- The answer says nothing about the budget: only a probe's lease ends, so the next may go.
  if ARGV[6] == '1' and redis.call('HGET', gate, 'epoch') == ARGV[1] then
    redis.call('HDEL', gate, 'lease_until')
  end
  return 0
end

if redis.call('EXISTS', gate) == 0 then
  redis.call('HSET', gate, 'epoch', ARGV[7], 'issued', 0)
end
local g = redis.call('HMGET', gate, 'epoch', 'issued', 'closed_until', 'cap', 'cap_reset')
local issued = tonumber(g[2]) or 0
-- Calls taken after this one were not counted in its `remaining` yet; from another epoch
-- (Redis lost its state since), every call taken since is one.
local later = issued
if g[1] == ARGV[1] then later = math.max(0, issued - (tonumber(ARGV[2]) + 1)) end
local closed_until = tonumber(g[3]) or 0
if throttled >= 0 then closed_until = math.max(closed_until, now + throttled) end
if counted then
  local reset = now + reset_in
  if remaining == 0 then
    closed_until = math.max(closed_until, reset)
  else
    local allowed = math.max(0, remaining - later)
    local cap, cap_reset = tonumber(g[4]), tonumber(g[5]) or 0
    if cap and cap_reset > now and math.abs(cap_reset - reset) < 1000 then
      -- The same upstream window: trust the lower count.
      redis.call('HSET', gate, 'cap', math.min(cap, allowed))
    else
      redis.call('HSET', gate, 'cap', allowed, 'cap_reset', reset)
    end
  end
end
redis.call('HSET', gate, 'closed_until', closed_until)
-- The upstream has said where the budget stands: no more probing.
redis.call('HDEL', gate, 'probe_until', 'lease_until')
redis.call('PEXPIRE', gate, tonumber(ARGV[8]))
return 1
