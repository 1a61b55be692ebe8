-- A replica writes its own calls of the last window back into the shared log after Redis lost
-- it (restarted empty, flushed): the log is the only record of what went upstream, and each
-- replica remembers what it sent. Idempotent (ZADD NX on unique members), so a replica may
-- write them again.
--
-- KEYS[1] the profile's call log   KEYS[2] its gate
-- ARGV[1] how long a call stays in the log (window plus hop margin, ms)
-- ARGV[2], ARGV[3], ... pairs: a call's time (ms, Redis's clock when it was taken), its member
--
-- Returns {the gate's epoch ('' when no gate exists yet), how many calls were written back}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local span = tonumber(ARGV[1])
local written = 0
for i = 2, #ARGV - 1, 2 do
  local at = tonumber(ARGV[i])
  if at > now - span then
    written = written + redis.call('ZADD', KEYS[1], 'NX', at, ARGV[i + 1])
  end
end
if written > 0 then redis.call('PEXPIRE', KEYS[1], span) end
return {redis.call('HGET', KEYS[2], 'epoch') or '', written}
