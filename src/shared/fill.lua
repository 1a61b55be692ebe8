-- A memory miss asks the shared cache, and takes the question's fill lock when it must fetch:
-- one round trip, atomically, so "read the entry, else lock" has no gap another replica's
-- store could fall into (the lock is the re-check).
--
-- KEYS[1] the entry   KEYS[2] the fill lock   (one hash tag: the question's)
-- ARGV[1] this fill's token ('' = only read)  ARGV[2] the lease (ms)
-- ARGV[3] '1': take the lock even though an entry exists (the one there is stale or purged)
--
-- Returns {entry or '', took the lock (0/1), the lock's PTTL when not taken, now_ms}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local entry = redis.call('GET', KEYS[1])
local took = 0
if ARGV[1] ~= '' and (not entry or ARGV[3] == '1') then
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then took = 1 end
end
local ttl = 0
if took == 0 then ttl = redis.call('PTTL', KEYS[2]) end
return {entry or '', took, ttl, now}
