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
-- ARGV[8]  key prefix: the channels are {prefix}:events, {prefix}:events:{type} and, for a job,
--          {prefix}:jobs:{JobId}
-- ARGV[9]  event type
-- ARGV[10] job hash fields (mode "job"): a JSON array of field, value, field, value...
-- ARGV[11] the publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[12] what follows the stream id in the envelope id: "", or "@<partition>"
-- Returns {1, id} when recorded, {0, id of the earlier record} for a duplicate.
-- Every check comes before the first write, so an error leaves nothing half-written.

local marker, stream, pending = KEYS[1], KEYS[2], KEYS[3]
local mode, job_id, status, completed_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local ttl, maxlen, envelope, prefix = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local command, partition = ARGV[11], ARGV[12]
local guessed = false
local given = {}

if mode == 'job' then
  local seen, recorded_status, recorded_verified =
    unpack(redis.call('HMGET', marker, 'envelope_id', 'status', 'verified'))
  -- A timed_out verdict is the reconciler's guess: a real outcome arriving later still counts.
  guessed = recorded_status == 'timed_out' and status ~= 'timed_out'
  if seen and not guessed and recorded_verified ~= 'false' then
    return {0, seen}
  end
  given = cjson.decode(ARGV[10])
  -- So is an outcome ListDynamicImage could not confirm, against one it confirms.
  if recorded_verified == 'false' then
    for i = 1, #given - 1, 2 do
      if given[i] == 'verified' and given[i + 1] == 'true' then
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

local channels
if mode == 'job' then
  channels = job_outcome_channels(prefix, job_id)
else
  channels = {prefix .. ':events', prefix .. ':events:' .. ARGV[9]}
end
local id = next_stream_id(stream)
envelope = with_id(envelope, id .. partition)
local submission = nil
if mode == 'job' then
  submission = submission_of(marker, completed_ms)
  if submission then
    envelope = with_submission(envelope, submission)
  end
end
-- The stream entry is the first write (see append).
id, envelope = append(stream, maxlen, id, envelope, partition)

if mode == 'job' then
  local fields = {'envelope_id', id, 'completed_ms', completed_ms,
                  'correlated', submission and '1' or '0'}
  local verified = nil
  for i = 1, #given - 1, 2 do
    fields[#fields + 1] = given[i]
    fields[#fields + 1] = given[i + 1]
    if given[i] == 'verified' then
      verified = given[i + 1]
    end
  end
  redis.call('HSET', marker, unpack(fields))
  if guessed then
    -- Result or error fields of the guess that the real outcome does not have go (and an older
    -- version's long values, now kept beside the hash).
    local present = {}
    for i = 1, #fields, 2 do
      present[fields[i]] = true
    end
    for _, field in ipairs({'file_url', 'file_size', 'fps', 'width', 'height', 'error_code',
                            'error_message', 'event_time', 'envelope'}) do
      if not present[field] then
        redis.call('HDEL', marker, field)
      end
    end
  end
  redis.call('EXPIRE', marker, ttl)
  keep_envelope(marker, envelope, tonumber(ttl) * 1000)
  if status == 'timed_out' or verified == 'false' then
    -- A guess: the real outcome may still come and will want the submission.
    redis.call('EXPIRE', submission_key(marker), ttl)
  else
    -- The envelope carries the submission from now on.
    redis.call('DEL', submission_key(marker))
  end
  redis.call('ZREM', pending, job_id)
else
  redis.call('SET', marker, id, 'EX', ttl)
end
publish(command, channels, envelope)
return {1, id}
