-- Record what was submitted for a job, whichever of submission and outcome comes first.
--
-- KEYS[1]  the job hash
-- KEYS[2]  the pending-jobs index
-- KEYS[3]  the durable stream
-- KEYS[4]  the submission stats hash
-- ARGV[1]  job id
-- ARGV[2]  video id
-- ARGV[3]  the submission JSON object
-- ARGV[4]  submission time, ms since the epoch
-- ARGV[5]  seconds the job record is kept
-- ARGV[6]  approximate stream length to keep
-- ARGV[7]  the stats field counting this submission (VOD accepted it)
-- ARGV[8]  the publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[9]  what follows the stream id in the envelope id: "", or "@<partition>"
-- ARGV[10 ..]  channels the job's outcome is published on
-- Returns {0, ''} if the job's submission was recorded before, {1, ''} when the job is now
-- pending, and {1, id} when its outcome had come first and was published again, correlated.

local job, pending, stream = KEYS[1], KEYS[2], KEYS[3]
local job_id, video_id, submission, submitted_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, maxlen = ARGV[5], ARGV[6]

redis.call('HINCRBY', KEYS[4], ARGV[7], 1)
if redis.call('HEXISTS', job, 'submitted_ms') == 1 then
  return {0, ''}
end
local envelope = recorded_envelope(job)
redis.call('HSET', job, 'submitted_ms', submitted_ms)
redis.call('HSETNX', job, 'video_id', video_id)
if not envelope then
  redis.call('SET', submission_key(job), submission, 'EX', ttl)
  redis.call('HSETNX', job, 'status', 'submitted')
  redis.call('ZADD', pending, submitted_ms, job_id)
  redis.call('EXPIRE', job, ttl)
  return {1, ''}
end

-- The outcome came first and went out uncorrelated; publish it once more, correlated.
local channels = {}
for i = 10, #ARGV do
  channels[#channels + 1] = ARGV[i]
end
local id = next_stream_id(stream)
local completed_ms = tonumber(redis.call('HGET', job, 'completed_ms'))
local latency = math.max(0, completed_ms - tonumber(submitted_ms))
envelope = with_submission(with_id(envelope, id .. ARGV[9]),
  string.sub(submission, 1, -2) .. string.format(',"latency_ms":%d}', latency))
id, envelope = append(stream, maxlen, id, envelope, ARGV[9])
redis.call('HSET', job, 'envelope_id', id, 'correlated', '1')
redis.call('HDEL', job, 'envelope')
local status, verified = unpack(redis.call('HMGET', job, 'status', 'verified'))
if status == 'timed_out' or verified == 'false' then
  -- A guess: the real outcome may still come and will want the submission.
  redis.call('SET', submission_key(job), submission, 'EX', ttl)
end
local kept_ms = redis.call('PTTL', job)
keep_envelope(job, envelope, kept_ms > 0 and kept_ms or tonumber(ttl) * 1000)
publish(ARGV[8], channels, envelope)
return {1, id}
