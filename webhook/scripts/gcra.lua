-- Reserve the next send slot of a rate-limited quota (GCRA, no burst): every caller gets its
-- own slot, one emission interval after the previous one, in the order of arrival.
--
-- KEYS[1]  the quota's theoretical arrival time (microseconds since the epoch)
-- ARGV[1]  emission interval, microseconds
-- Returns {slot, wait}: the reserved send time on Redis's clock and how long from now until then,
-- both in microseconds.

local interval = tonumber(ARGV[1])
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or 0), now)
redis.call('SET', KEYS[1], string.format('%d', slot + interval),
           'PX', math.ceil((slot + interval - now) / 1000) + 1000)
return {slot, slot - now}
