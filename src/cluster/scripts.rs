//! The Lua scripts that keep the cluster's Redis state consistent. Each one runs
//! atomically in Redis, so a publish deciding "pending or live" and a connect
//! registering and taking pending events can never interleave (see the module
//! doc of [`super`] for why that matters).
//!
//! Every key a script touches carries the cluster's hash tag (`{prefix}`), so
//! all of them live in one slot and the scripts work on Redis Cluster too; the
//! log key is passed as `KEYS[1]` for routing, the others are derived from the
//! tag in `ARGV[1]`.
//!
//! Redis counts every `redis.call` of a script as a command, so each script
//! counts its own calls (`rc`) and returns the figure: herald reports how many
//! commands each batch cost (`herald_redis_commands_total`). Lists of members are
//! sent in chunks of 1,000 arguments per variadic command (Lua's `unpack` limit).

use fred::types::scripts::Script;

/// Shared helpers prepended to every script.
const PRELUDE: &str = r#"
local calls = 0
local function rc(...)
  calls = calls + 1
  return redis.call(...)
end
local function chunked(cmd, key, list, step)
  local out = {}
  local n = #list
  local size = 1000 * step
  for i = 1, n, size do
    local r = rc(cmd, key, unpack(list, i, math.min(i + size - 1, n)))
    if type(r) == 'table' then
      for _, v in ipairs(r) do out[#out + 1] = v end
    end
  end
  return out
end
local function user_of(m) return string.match(m, '^([^/]*)/') end
local function pod_of(o) return string.match(o, '^([^/]*)/') end
local T = ARGV[1]
local conns, ucount, hb, inactive, pods =
  T .. ':conns', T .. ':ucount', T .. ':hb', T .. ':inactive', T .. ':pods'
local function close_on(owner, m, reason)
  local ctl = T .. ':ctl:' .. pod_of(owner)
  rc('XADD', ctl, 'MAXLEN', '~', 1000, '*', 'op', 'close', 'm', m, 'o', owner, 'r', reason)
  rc('PEXPIRE', ctl, 3600000)
end
local function forget(list, owners, now)
  if #list == 0 then return end
  chunked('HDEL', conns, list, 1)
  chunked('ZREM', hb, list, 1)
  local inact = {}
  for _, m in ipairs(list) do
    inact[#inact + 1] = now
    inact[#inact + 1] = m
  end
  chunked('ZADD', inactive, inact, 2)
  for j, m in ipairs(list) do
    if owners[j] then
      local u = user_of(m)
      if rc('HINCRBY', ucount, u, -1) <= 0 then rc('HDEL', ucount, u) end
    end
  end
end
"#;

/// Register a batch of new connections.
/// ARGV: tag, now_ms, pod, then (member, serial, resume 0/1) per connection.
/// Returns `{last log id, calls, {pending entries per connection}}`.
const REGISTER: &str = r#"
local now, pod = ARGV[2], ARGV[3]
local members, owner_args, hb_args, resume, serials = {}, {}, {}, {}, {}
for i = 4, #ARGV, 3 do
  local m = ARGV[i]
  members[#members + 1] = m
  serials[#serials + 1] = ARGV[i + 1]
  resume[#resume + 1] = ARGV[i + 2]
  owner_args[#owner_args + 1] = m
  owner_args[#owner_args + 1] = pod .. '/' .. ARGV[i + 1]
  hb_args[#hb_args + 1] = now
  hb_args[#hb_args + 1] = m
end
local old = chunked('HMGET', conns, members, 1)
chunked('HSET', conns, owner_args, 2)
chunked('ZADD', hb, hb_args, 2)
chunked('ZREM', inactive, members, 1)
local out = {}
for j, m in ipairs(members) do
  local u = user_of(m)
  local o = old[j]
  if not o then
    rc('HINCRBY', ucount, u, 1)
  elseif pod_of(o) ~= pod then
    -- The same user and connection id on another pod: that stream is replaced.
    close_on(o, m, 'replaced')
  end
  local pk = T .. ':pending:' .. u
  if resume[j] == '1' then
    rc('DEL', pk)
    out[j] = {}
  else
    out[j] = rc('LRANGE', pk, 0, -1)
    if #out[j] > 0 then rc('DEL', pk) end
  end
end
local last = rc('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
return {last_id, calls, out}
"#;

/// Append one event to the log; keep it pending for targeted users with no
/// connection anywhere. ARGV: tag, event, data, kind (a/u/t), targets (comma
/// separated), ttl_ms, max_pending, maxlen, minid ('0' for none), now_ms,
/// publish unix ns. Returns `{id, calls, dropped, pended}`.
const PUBLISH: &str = r#"
local id = rc('XADD', KEYS[1], 'MAXLEN', '~', ARGV[8], '*',
  'e', ARGV[2], 'd', ARGV[3], 'k', ARGV[4], 't', ARGV[5], 'ns', ARGV[11])
if ARGV[9] ~= '0' then rc('XTRIM', KEYS[1], 'MINID', '~', ARGV[9]) end
local ttl, maxp = tonumber(ARGV[6]), tonumber(ARGV[7])
local dropped, pended = 0, 0
if ARGV[4] == 'u' and ttl > 0 and maxp > 0 then
  local users, seen = {}, {}
  for u in string.gmatch(ARGV[5], '[^,]+') do
    if not seen[u] then
      seen[u] = true
      users[#users + 1] = u
    end
  end
  local online = chunked('HMGET', ucount, users, 1)
  local entry = id .. ' ' .. (tonumber(ARGV[10]) + ttl) .. ' ' .. ARGV[2] .. '\n' .. ARGV[3]
  for i, u in ipairs(users) do
    if not online[i] or tonumber(online[i]) <= 0 then
      local k = T .. ':pending:' .. u
      local n = rc('RPUSH', k, entry)
      if n > maxp then
        rc('LTRIM', k, -maxp, -1)
        dropped = dropped + n - maxp
      end
      if rc('PTTL', k) < ttl then rc('PEXPIRE', k, ttl) end
      pended = pended + 1
    end
  end
end
return {id, calls, dropped, pended}
"#;

/// Forget connections that ended. ARGV: tag, now_ms, then (member, expected
/// owner `pod/serial`) pairs: an entry is removed only while it still names that
/// exact connection (a newer one with the same ids is left alone).
/// Returns `{calls, removed}`.
const REMOVE: &str = r#"
local now = ARGV[2]
local members, expect, seen = {}, {}, {}
for i = 3, #ARGV, 2 do
  if not seen[ARGV[i]] then
    seen[ARGV[i]] = true
    members[#members + 1] = ARGV[i]
    expect[#expect + 1] = ARGV[i + 1]
  end
end
local owners = chunked('HMGET', conns, members, 1)
local gone, gone_owners = {}, {}
for j, m in ipairs(members) do
  if owners[j] and owners[j] == expect[j] then
    gone[#gone + 1] = m
    gone_owners[#gone_owners + 1] = owners[j]
  end
end
forget(gone, gone_owners, now)
return {calls, #gone}
"#;

/// End a connection wherever it lives (a disconnect sent to another pod).
/// ARGV: tag, now_ms, member. Returns `{calls, owner or nil}`.
const DISCONNECT: &str = r#"
local now, m = ARGV[2], ARGV[3]
local o = rc('HGET', conns, m)
if not o then return {calls, false} end
forget({m}, {o}, now)
close_on(o, m, 'disconnected')
return {calls, o}
"#;

/// Put back connections a heartbeat found missing (cleaned while this pod could
/// not reach Redis, or Redis restarted empty). ARGV: tag, now_ms, pod, then
/// (member, serial) pairs. Entries another pod owns are left alone.
/// Returns `{calls, restored}`.
const REREGISTER: &str = r#"
local now, pod = ARGV[2], ARGV[3]
local members, serials = {}, {}
for i = 4, #ARGV, 2 do
  members[#members + 1] = ARGV[i]
  serials[#serials + 1] = ARGV[i + 1]
end
local owners = chunked('HMGET', conns, members, 1)
local set, fixed = {}, {}
for j, m in ipairs(members) do
  if not owners[j] then
    set[#set + 1] = m
    set[#set + 1] = pod .. '/' .. serials[j]
    fixed[#fixed + 1] = m
    rc('HINCRBY', ucount, user_of(m), 1)
  end
end
if #fixed > 0 then
  chunked('HSET', conns, set, 2)
  chunked('ZREM', inactive, fixed, 1)
end
return {calls, #fixed}
"#;

/// The cleanup job: mark connections whose heartbeat is older than the cutoff
/// inactive, forget dead pods, bound the inactive set. Safe to run on every pod
/// at once. ARGV: tag, now_ms, cutoff_ms, limit, inactive_keep_ms, inactive_cap.
/// Returns `{calls, marked}`.
const CLEANUP: &str = r#"
local now, cutoff = tonumber(ARGV[2]), ARGV[3]
local stale = rc('ZRANGEBYSCORE', hb, '-inf', cutoff, 'LIMIT', 0, ARGV[4])
if #stale > 0 then
  local owners = chunked('HMGET', conns, stale, 1)
  forget(stale, owners, now)
end
rc('ZREMRANGEBYSCORE', pods, '-inf', cutoff)
rc('ZREMRANGEBYSCORE', inactive, '-inf', now - tonumber(ARGV[5]))
rc('ZREMRANGEBYRANK', inactive, 0, -(tonumber(ARGV[6]) + 1))
return {calls, #stale}
"#;

/// Cluster-wide counts. ARGV: tag, live-pod cutoff_ms.
/// Returns `{calls, connections, users, pods, inactive}`.
const STATS: &str = r#"
local c = rc('HLEN', conns)
local u = rc('HLEN', ucount)
local p = rc('ZCOUNT', pods, ARGV[2], '+inf')
local i = rc('ZCARD', inactive)
return {calls, c, u, p, i}
"#;

/// The loaded scripts (their SHA1s; bodies are sent again on `NOSCRIPT`, e.g.
/// after Redis restarted).
pub struct Scripts {
    pub register: Script,
    pub publish: Script,
    pub remove: Script,
    pub disconnect: Script,
    pub reregister: Script,
    pub cleanup: Script,
    pub stats: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let s = |body: &str| Script::from_lua(format!("{PRELUDE}{body}"));
        Scripts {
            register: s(REGISTER),
            publish: s(PUBLISH),
            remove: s(REMOVE),
            disconnect: s(DISCONNECT),
            reregister: s(REREGISTER),
            cleanup: s(CLEANUP),
            stats: s(STATS),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
