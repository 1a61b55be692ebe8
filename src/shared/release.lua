-- A fill that stored nothing (an error, or an answer that may not be stored) gives its lock
-- back and wakes its waiters, so one of them takes over at once instead of at the lease's end.
--
-- KEYS[1] the fill lock   ARGV[1] its token   ARGV[2] the channel   ARGV[3] the message
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
