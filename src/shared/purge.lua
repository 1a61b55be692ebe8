-- A purge, recorded and announced: the record lets a shared-cache read tell an entry stored
-- before the purge (soft: stale, hard: absent); the stream message purges every replica's
-- memory.
--
-- KEYS[1] the purge records (a hash: 'soft:<scope>' / 'hard:<scope>' -> ms)   KEYS[2] the stream
-- ARGV[1] the scope ('all', 'sim:<id>', 'tag:<id>')   ARGV[2] hard ('1') or soft ('0')
-- ARGV[3] the purging replica   ARGV[4] about how many messages the stream keeps
-- ARGV[5] how long a record matters (ms): the longest any entry lives
--
-- Returns {now_ms, the message's id}.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local kind = 'soft:'
if ARGV[2] == '1' then kind = 'hard:' end
redis.call('HSET', KEYS[1], kind .. ARGV[1], now)
-- Records older than any entry can be are forgotten, so the hash stays small.
local all = redis.call('HGETALL', KEYS[1])
local oldest = now - tonumber(ARGV[5])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < oldest then redis.call('HDEL', KEYS[1], all[i]) end
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
  'scope', ARGV[1], 'hard', ARGV[2], 'origin', ARGV[3])
return {now, id}
