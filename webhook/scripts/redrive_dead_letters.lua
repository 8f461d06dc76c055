-- Redrives dead letters, all or none: each one's entry is appended to its group's redrive stream
-- and the dead letter deleted in one step, so two redrives of one dead letter (at once, or one
-- re-run after a crash) put it back once.
-- KEYS[1]: the dead-letter stream; KEYS[1 + i]: the redrive stream of the i-th dead letter.
-- ARGV, for each dead letter in turn: its id, the number n of field and value items of the
-- entry to append, then those n items.
-- Returns the ids no longer in the dead-letter stream, having changed nothing; or no ids.
local letters = {}
local gone = {}
local at = 1
for i = 2, #KEYS do
  local id, count = ARGV[at], tonumber(ARGV[at + 1])
  if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
    table.insert(gone, id)
  end
  table.insert(letters, {stream = KEYS[i], id = id, first = at + 2, last = at + 1 + count})
  at = at + 2 + count
end
if #gone > 0 then
  return gone
end
for _, letter in ipairs(letters) do
  -- 0 for an id listed twice: its entry is appended once.
  if redis.call('XDEL', KEYS[1], letter.id) == 1 then
    redis.call('XADD', letter.stream, '*', unpack(ARGV, letter.first, letter.last))
  end
end
return gone
