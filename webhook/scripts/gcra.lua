-- Reserve the next send slot of a rate-limited quota (GCRA, no burst): every caller gets its
-- own slot, one emission interval after the previous one, in the order of arrival.
--
-- KEYS[1]  the quota's theoretical arrival time (microseconds since the epoch)
-- KEYS[2]  the limiter's stats hash: per quota, calls, their total wait, the arrival time and
--          interval (read by `status` and /metrics without knowing the accounts)
-- ARGV[1]  emission interval, microseconds
-- ARGV[2]  the quota's name in the stats hash
-- Returns {slot, wait}: the reserved send time on Redis's clock and how long from now until then,
-- both in microseconds.

local interval, name = tonumber(ARGV[1]), ARGV[2]
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or 0), now)
local tat = string.format('%d', slot + interval)
redis.call('SET', KEYS[1], tat, 'PX', math.ceil((slot + interval - now) / 1000) + 1000)
redis.call('HINCRBY', KEYS[2], name .. '|calls', 1)
redis.call('HINCRBY', KEYS[2], name .. '|wait_us', string.format('%d', slot - now))
redis.call('HSET', KEYS[2], name .. '|tat_us', tat, name .. '|interval_us', ARGV[1])
return {slot, slot - now}
