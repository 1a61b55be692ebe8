-- What a replica following the purge stream needs, read atomically: Redis's epoch (so a
-- restart or a flush is noticed), the stream's oldest and newest ids (so a trimmed-away
-- position is noticed), the messages after its position, and every purge record.
--
-- KEYS[1] the records   KEYS[2] the stream   KEYS[3] the epoch
-- ARGV[1] an epoch to set if there is none   ARGV[2] the last id read ('' = none yet)
-- ARGV[3] at most this many messages
--
-- Returns {epoch, oldest id or '', newest id or '0-0', messages, records (flat)}.
redis.call('SET', KEYS[3], ARGV[1], 'NX')
local epoch = redis.call('GET', KEYS[3])
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local messages = {}
if ARGV[2] ~= '' then
  messages = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])
end
local oldest_id, newest_id = '', '0-0'
if oldest[1] then oldest_id = oldest[1][1] end
if newest[1] then newest_id = newest[1][1] end
return {epoch, oldest_id, newest_id, messages, redis.call('HGETALL', KEYS[1])}
