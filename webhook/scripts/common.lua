-- Shared by every script: store.py puts this in front of each one.

-- The next stream entry id, chosen here rather than by XADD '*' so the envelope can carry it.
local function next_stream_id(stream)
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
  return string.format('%d-%d', ms, seq)
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

-- The job's recorded submission with its latency to `completed_ms`, or nil if none.
local function submission_of(job, completed_ms)
  local submission, submitted_ms = unpack(redis.call('HMGET', job, 'submission', 'submitted_ms'))
  if not submission then
    return nil
  end
  local latency = math.max(0, completed_ms - tonumber(submitted_ms))
  return string.sub(submission, 1, -2) .. string.format(',"latency_ms":%d}', latency)
end

-- Append to the capped stream and publish on every channel.
local function fan_out(stream, maxlen, id, envelope, channels)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'envelope', envelope)
  for _, channel in ipairs(channels) do
    redis.call('PUBLISH', channel, envelope)
  end
end

