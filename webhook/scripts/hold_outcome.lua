-- Hold a job outcome until ListDynamicImage confirms it (VERIFY_OUTCOMES): stored durably before
-- the 200, keyed by the body's fingerprint, so a forged body never takes the real one's place.
--
-- KEYS[1]  the job hash
-- KEYS[2]  the held outcome: hash of `envelope` and `attempts` (later a `state` tombstone)
-- KEYS[3]  the verification queue: sorted set of fingerprints by when they are due (ms)
-- ARGV[1]  the body's fingerprint
-- ARGV[2]  the envelope JSON
-- ARGV[3]  seconds the held outcome (or its tombstone) is kept
-- ARGV[4]  most outcomes held at once
-- Returns {1, ''} when held now, {0, id} when the job's outcome was recorded already (a
-- confirmed one, or VOD's own), {0, ''} when this very body was held before, {-1, ''} when
-- nothing was held because the most outcomes are held already.

local job, held, queue = KEYS[1], KEYS[2], KEYS[3]
local fingerprint, envelope, ttl, most = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local seen, status, verified = unpack(redis.call('HMGET', job, 'envelope_id', 'status', 'verified'))
-- Guesses (timed_out) and unconfirmed outcomes may still be superseded by a confirmed one.
if seen and status ~= 'timed_out' and verified ~= 'false' then
  return {0, seen}
end
if redis.call('EXISTS', held) == 1 then
  return {0, ''}
end
-- A re-send is answered above even when full; only a new body is refused (and retried by VOD).
if redis.call('ZCARD', queue) >= most then
  return {-1, ''}
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', held, 'envelope', envelope, 'attempts', 0)
redis.call('EXPIRE', held, ttl)
redis.call('ZADD', queue, now_ms, fingerprint)
return {1, ''}
