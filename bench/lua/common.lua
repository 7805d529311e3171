-- Shared by the scenario scripts: reads the chat ids and the token the seeder wrote
-- (BENCH_STATE: first line the bearer token, then one chat id per line) and picks a random
-- chat per request. Each wrk thread seeds its own generator.
local M = {}

function M.load()
  local path = os.getenv("BENCH_STATE") or "bench-state.txt"
  local f = assert(io.open(path, "r"), "cannot read " .. path)
  local token = f:read("*l")
  local chats = {}
  for line in f:lines() do
    if #line > 0 then chats[#chats + 1] = line end
  end
  f:close()
  assert(#chats > 0, "no chats in " .. path)
  return token, chats
end

return M
