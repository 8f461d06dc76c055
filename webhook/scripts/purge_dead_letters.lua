-- Deletes dead letters, all or none.
-- KEYS[1]: the dead-letter stream; ARGV: the ids.
-- Returns the ids not in the dead-letter stream, having deleted nothing; or no ids.
local gone = {}
for _, id in ipairs(ARGV) do
  if #redis.call('XRANGE', KEYS[1], id, id) == 0 then
    table.insert(gone, id)
  end
end
if #gone == 0 then
  redis.call('XDEL', KEYS[1], unpack(ARGV))
end
return gone
