-- The holder of a fill lock extends its lease while it fetches; 0 when the lock is no longer
-- its own (it expired and another replica took over, or Redis lost it).
--
-- KEYS[1] the fill lock   ARGV[1] the holder's token   ARGV[2] the lease (ms)
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
