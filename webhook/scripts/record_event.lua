-- Record one event once: dedup, job record and correlation, stream entry and fan-out, atomically.
--
-- KEYS[1]  marker: the job hash (mode "job") or the event's dedup key (mode "event")
-- KEYS[2]  the durable stream
-- KEYS[3]  the pending-jobs index
-- ARGV[1]  mode, "job" or "event"
-- ARGV[2]  job id (mode "job")
-- ARGV[3]  status of this outcome (mode "job"): success, fail or timed_out
-- ARGV[4]  completion time, ms since the epoch (for the submission's latency)
-- ARGV[5]  seconds the marker is kept
-- ARGV[6]  approximate stream length to keep
-- ARGV[7]  the envelope JSON, starting with {"id":"" and with "submission":null
-- ARGV[8]  n, the number of channels, then ARGV[9 .. 8+n] the channels
-- ARGV[9+n ..]  job hash field/value pairs (mode "job")
-- Returns {1, id} when recorded, {0, id of the earlier record} for a duplicate.
-- Every check comes before the first write, so an error leaves nothing half-written.

local marker, stream, pending = KEYS[1], KEYS[2], KEYS[3]
local mode, job_id, status, completed_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local ttl, maxlen, envelope, n = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
local guessed = false

if mode == 'job' then
  local seen, recorded_status, recorded_verified =
    unpack(redis.call('HMGET', marker, 'envelope_id', 'status', 'verified'))
  -- A timed_out verdict is the reconciler's guess: a real outcome arriving later still counts.
  guessed = recorded_status == 'timed_out' and status ~= 'timed_out'
  -- So is an outcome ListDynamicImage could not confirm, against one it confirms.
  if recorded_verified == 'false' then
    for i = 9 + n, #ARGV - 1, 2 do
      if ARGV[i] == 'verified' and ARGV[i + 1] == 'true' then
        guessed = true
      end
    end
  end
  if seen and not guessed then
    return {0, seen}
  end
else
  local seen = redis.call('GET', marker)
  if seen then
    return {0, seen}
  end
end

local channels = {}
for i = 9, 8 + n do
  channels[#channels + 1] = ARGV[i]
end
local id = next_stream_id(stream)
envelope = with_id(envelope, id)

if mode == 'job' then
  local submission = submission_of(marker, completed_ms)
  if submission then
    envelope = with_submission(envelope, submission)
  end
  local fields = {'envelope_id', id, 'envelope', envelope, 'completed_ms', completed_ms,
                  'correlated', submission and '1' or '0'}
  for i = 9 + n, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  -- HSET is the first write: refused under OOM, it leaves nothing half-written.
  redis.call('HSET', marker, unpack(fields))
  if guessed then
    -- Result or error fields of the guess that the real outcome does not have go.
    local given = {}
    for i = 1, #fields, 2 do
      given[fields[i]] = true
    end
    for _, field in ipairs({'file_url', 'file_size', 'fps', 'width', 'height', 'error_code',
                            'error_message', 'event_time'}) do
      if not given[field] then
        redis.call('HDEL', marker, field)
      end
    end
  end
  redis.call('EXPIRE', marker, ttl)
  redis.call('ZREM', pending, job_id)
else
  redis.call('SET', marker, id, 'EX', ttl)
end
fan_out(stream, maxlen, id, envelope, channels)
return {1, id}
