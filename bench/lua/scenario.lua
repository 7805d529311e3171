-- One wrk script for every scenario, chosen by BENCH_SCENARIO:
--   add_pair   POST /api/v1/chats/{id}/messages  {"content", "response"}  (a Q&A pair)
--   read_path  GET  /api/v1/chats/{id}/messages?limit=20                  (a resident path)
--   fork       POST /api/v1/chats/{id}/branches  {"message_index": 0}
--              (also fork_20, fork_1k, fork_10k: the same on 64 chats of that many messages)
--   reply      POST /api/v1/chats/{id}/messages  {"content", "reply": true, "stream": true}
--   login_flood POST /api/v1/auth/login  {"email", "password"}  (a wrong password: bench/fair.sh)
--   ceiling    GET  /                                                     (the trivial handler)
--   ceiling_body GET /body?bytes=$BENCH_BODY_BYTES     (the trivial handler, a static body)
--   ceiling_actor GET /actor/{id}?bytes=...  (token check + one actor round trip + that body)
--   ceiling_local GET /local/{id}?bytes=...  (the same, the actor on an HTTP worker as Arbor's)
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local common = require("common")

local scenario = os.getenv("BENCH_SCENARIO") or "add_pair"
local threads = tonumber(os.getenv("BENCH_THREADS") or "2")
local token, chats
local body_bytes = os.getenv("BENCH_BODY_BYTES") or "0"
local body_path = "/body?bytes=" .. body_bytes
local counter = 0
local next_chat = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
  local actor = scenario == "ceiling_actor" or scenario == "ceiling_local"
  if (scenario:sub(1, 7) ~= "ceiling" and scenario ~= "login_flood") or actor then
    token, chats = common.load()
  end
  if actor then
    token = os.getenv("BENCH_CEILING_TOKEN")
  end
end

local bodies = {
  add_pair = '{"content":"How do branches work?","response":"A branch is a pointer to a head message."}',
  fork = '{"message_index":0}',
  reply = '{"content":"Say hello.","reply":true,"stream":true}',
}

-- A random chat; for replies, each thread walks its own share of the chats in turn, so a chat
-- comes back only after all the others (one reply per branch at a time is Arbor's rule).
local function pick()
  if scenario ~= "reply" then
    return chats[math.random(#chats)]
  end
  next_chat = next_chat + 1
  local index = ((next_chat * threads + (id or 1) - 1) % #chats) + 1
  return chats[index]
end

function request()
  if scenario == "ceiling" then
    return wrk.format("GET", "/")
  elseif scenario == "login_flood" then
    return wrk.format("POST", "/api/v1/auth/login", { ["Content-Type"] = "application/json" },
      '{"email":"bench-flood@example.com","password":"not-the-password"}')
  elseif scenario == "ceiling_body" then
    return wrk.format("GET", body_path)
  elseif scenario == "ceiling_actor" or scenario == "ceiling_local" then
    local route = scenario == "ceiling_actor" and "/actor/" or "/local/"
    local path = route .. chats[math.random(#chats)] .. "?bytes=" .. body_bytes
    return wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
  end
  local chat = pick()
  local headers = { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }
  if scenario == "read_path" then
    return wrk.format("GET", "/api/v1/chats/" .. chat .. "/messages?limit=20", headers)
  elseif scenario:sub(1, 4) == "fork" then
    return wrk.format("POST", "/api/v1/chats/" .. chat .. "/branches", headers, bodies.fork)
  else
    return wrk.format("POST", "/api/v1/chats/" .. chat .. "/messages", headers, bodies[scenario])
  end
end

-- Showing the first failures costs wrk a Lua call and a body copy per response (CPU the server
-- shares), so it is on only when asked for.
if os.getenv("BENCH_DEBUG") then
  local failures = 0
  function response(status, headers, body)
    if status >= 300 then
      failures = failures + 1
      if failures <= 3 then io.stderr:write("unexpected " .. status .. ": " .. body .. "\n") end
    end
  end
end

function done(summary, latency, requests)
  -- One machine-readable line for bench/run.sh.
  io.write(string.format("BENCH requests=%d errors=%d non2xx=%d seconds=%.3f p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status,
    summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
