-- A fill's answer into the shared cache, its lock released and its waiters told: one round trip.
--
-- KEYS[1] the entry   KEYS[2] the fill lock
-- ARGV[1] the encoded entry   ARGV[2] how long Redis keeps it (ms: freshness + stale windows)
-- ARGV[3] the lock's token ('' = none held)   ARGV[4] when the fill began (ms, Redis's clock;
--         0 = now)   ARGV[5] the notification channel   ARGV[6] the message (the question's tag)
--
-- The entry is stamped with when its fill began, on Redis's clock: a purge recorded after that
-- instant (on the same clock) is newer than the data, whichever replica's clock is off.
local stored = tonumber(ARGV[4])
if stored == 0 then
  local time = redis.call('TIME')
  stored = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
redis.call('SET', KEYS[1], stored .. ':' .. ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return stored
