-- Record one event once: dedup, job record, stream entry and fan-out in one atomic step.
--
-- KEYS[1]  marker: the job hash (mode "job") or the event's dedup key (mode "event")
-- KEYS[2]  the durable stream
-- ARGV[1]  mode, "job" or "event"
-- ARGV[2]  seconds the marker is kept
-- ARGV[3]  approximate stream length to keep
-- ARGV[4]  the envelope JSON, starting with {"id":"" so the id can be filled in here
-- ARGV[5]  n, the number of channels to publish on, then ARGV[6 .. 5+n] the channels
-- ARGV[6+n ..]  job hash field/value pairs (mode "job")
-- Returns {1, id} when recorded, {0, id of the earlier record} for a duplicate.
-- Every check comes before the first write, so an error leaves nothing half-written.

local marker, stream = KEYS[1], KEYS[2]
local mode, ttl, maxlen, envelope = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[5])

local seen
if mode == 'job' then
  seen = redis.call('HGET', marker, 'envelope_id')
else
  seen = redis.call('GET', marker)
end
if seen then
  return {0, seen}
end

-- The entry id is chosen here rather than by XADD '*', so the envelope can carry it.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local seq = 0
if redis.call('EXISTS', stream) == 1 then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local last_ms, last_seq = string.match(info[i + 1], '^(%d+)-(%d+)$')
      if tonumber(last_ms) >= ms then
        ms = tonumber(last_ms)
        seq = tonumber(last_seq) + 1
      end
    end
  end
end
local id = string.format('%d-%d', ms, seq)
local body = '{"id":"' .. id .. '"' .. string.sub(envelope, 9)

redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'envelope', body)
if mode == 'job' then
  local fields = {'envelope_id', id, 'envelope', body}
  for i = 6 + n, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  redis.call('HSET', marker, unpack(fields))
  redis.call('EXPIRE', marker, ttl)
else
  redis.call('SET', marker, id, 'EX', ttl)
end
for i = 6, 5 + n do
  redis.call('PUBLISH', ARGV[i], body)
end
return {1, id}
