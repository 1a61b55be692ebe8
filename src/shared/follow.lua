-- What a replica following the purge stream needs, read atomically: Redis's epoch (so a
-- restart or a flush is noticed), how many messages the stream ever had and how many it has
-- trimmed away (Redis 7's `entries-added` less its length: a replica that has seen fewer than
-- that lost some unread), the newest id, the messages after its position, and every purge
-- record.
--
-- KEYS[1] the records   KEYS[2] the stream   KEYS[3] the epoch
-- ARGV[1] an epoch to set if there is none   ARGV[2] the last id read ('' = none yet)
-- ARGV[3] at most this many messages
--
-- Returns {epoch, messages ever added, messages trimmed away (-1: unknown, before Redis 7),
--          newest id or '0-0', messages, records (flat)}.
redis.call('SET', KEYS[3], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[3])
local added, trimmed, newest_id = 0, 0, '0-0'
local messages = {}
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  local length
  added = -1
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then added = info[i + 1] end
    if info[i] == 'length' then length = info[i + 1] end
  end
  if added >= 0 then trimmed = added - length else trimmed = -1 end
  local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if newest[1] then newest_id = newest[1][1] end
  if ARGV[2] ~= '' then
    messages = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])
  end
end
return {epoch, added, trimmed, newest_id, messages, redis.call('HGETALL', KEYS[1])}
