-- Claim held outcomes that are due for verification: each claimed one is pushed `lease` ms into
-- the future, so no other process takes it meanwhile, and one whose claimer died comes due again.
--
-- KEYS[1]  the verification queue (sorted set of fingerprints by due time, ms)
-- ARGV[1]  lease, ms
-- ARGV[2]  most to claim
-- Returns the claimed fingerprints.

local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
for _, fingerprint in ipairs(due) do
  redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[1]), fingerprint)
end
return due
