-- Shared by every script: store.py puts this in front of each one.

-- Where the last stream id handed out is kept: reading it from XINFO STREAM would copy the first
-- and last envelopes on every call.
local function last_id_key(stream)
  return stream .. ':last-id'
end

-- The stream's last generated id, from the stream itself (when the key above is missing or lags).
local function last_generated_id(stream)
  if redis.call('EXISTS', stream) == 0 then
    return nil
  end
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return info[i + 1]
    end
  end
  return nil
end

-- The first id after `last` ("ms-seq" or nil) at the current time.
local function id_after(last)
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local seq = 0
  if last then
    local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
    if tonumber(last_ms) >= ms then
      ms = tonumber(last_ms)
      seq = tonumber(last_seq) + 1
    end
  end
  return string.format('%d-%d', ms, seq)
end

-- The next stream entry id, chosen here rather than by XADD '*' so the envelope can carry it.
-- append() checks it against the stream itself.
local function next_stream_id(stream)
  local last = redis.call('GET', last_id_key(stream))
  if not last then
    last = last_generated_id(stream)
  end
  return id_after(last)
end

-- An envelope's JSON starts with {"id":"..." ; give it `id`.
local function with_id(envelope, id)
  local close = string.find(envelope, '"', 8, true)
  return '{"id":"' .. id .. string.sub(envelope, close)
end

-- Fill the envelope's top-level "submission":null. The first match is the top-level field: it
-- precedes the payload, and a quote inside a JSON string is always escaped.
local function with_submission(envelope, submission)
  local first, last = string.find(envelope, ',"submission":null,', 1, true)
  return string.sub(envelope, 1, first) .. '"submission":' .. submission
    .. string.sub(envelope, last)
end

-- A job's long values live in strings beside its hash, so the hash stays a compact listpack:
-- {job}:envelope, its outcome's envelope, and {job}:submission, what was submitted (kept while
-- the job has no outcome, or only a guessed one). Records of older versions hold both in the hash.
local function envelope_key(job)
  return job .. ':envelope'
end

local function submission_key(job)
  return job .. ':submission'
end

-- The job's recorded outcome envelope, or nil.
local function recorded_envelope(job)
  return redis.call('GET', envelope_key(job)) or redis.call('HGET', job, 'envelope') or nil
end

-- The job's recorded submission with its latency to `completed_ms`, or nil if none.
local function submission_of(job, completed_ms)
  local submitted_ms = redis.call('HGET', job, 'submitted_ms')
  local submission = submitted_ms
    and (redis.call('GET', submission_key(job)) or redis.call('HGET', job, 'submission'))
  if not submission then
    return nil
  end
  local latency = math.max(0, completed_ms - tonumber(submitted_ms))
  return string.sub(submission, 1, -2) .. string.format(',"latency_ms":%d}', latency)
end

-- Keep the envelope for as long as the job record (`ttl_ms` ms, at least 1).
local function keep_envelope(job, envelope, ttl_ms)
  redis.call('SET', envelope_key(job), envelope, 'PX', math.max(1, ttl_ms))
end

-- Append `envelope` (carrying `id` .. `partition`, its envelope id) to the capped stream; returns
-- the envelope id and envelope appended. `partition` is "" with one partition, else "@<n>".
-- The first write of a script: refused under OOM, it leaves nothing written. Should the kept last
-- id lag the stream (an older version wrote to it), the id is taken from the stream instead.
local function append(stream, maxlen, id, envelope, partition)
  local added = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, id, 'envelope', envelope)
  if type(added) == 'table' and added.err then
    if not string.find(added.err, 'equal or smaller', 1, true) then
      -- Any other refusal (OOM, ...): raise it as it is.
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'envelope', envelope)
    end
    id = id_after(last_generated_id(stream))
    envelope = with_id(envelope, id .. partition)
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'envelope', envelope)
  end
  redis.call('SET', last_id_key(stream), id)
  return id .. partition, envelope
end

-- Publish on every channel with `command`: PUBLISH, or SPUBLISH on a cluster.
local function publish(command, channels, envelope)
  for _, channel in ipairs(channels) do
    redis.call(command, channel, envelope)
  end
end

-- The channels a job's outcome goes out on (Keys.job_outcome_channels in store.py).
local function job_outcome_channels(prefix, job_id)
  return {prefix .. ':events', prefix .. ':events:DynamicImageComplete', prefix .. ':jobs:' .. job_id}
end
