//! The Lua scripts that keep the cluster's Redis state consistent. Each one runs
//! atomically in Redis, so a publish deciding "pending, or which pods" and a
//! connect registering and taking pending events can never interleave (see the
//! module doc of [`super`] for why that matters).
//!
//! Every key a script touches carries the cluster's hash tag (`{prefix}`), so
//! all of them live in one slot and the scripts work on Redis Cluster too; the
//! log key is passed as `KEYS[1]` for routing, the others are derived from the
//! tag in `ARGV[1]`. `ARGV[2]` is the length bound of the pod inboxes and of the
//! broadcast stream (`MAXLEN ~`).
//!
//! One rule every script keeps, for the reader's merge ([`super::reader`]): it
//! writes a pod's inbox entries before any entry of the broadcast stream.
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
local function conn_of(m) return string.match(m, '^[^/]*/(.*)$') end
local function pod_of(o) return string.match(o, '^([^/]*)/') end
-- A connection's entry in `conns` is `pod/serial/connected ms/topics`; a
-- removal names it by `pod/serial`.
local function owner_is(o, e) return o == e or string.sub(o, 1, #e + 1) == e .. '/' end
-- Presence streams belong to an internal user (`#…`): never in the registry.
local function internal(m) return string.sub(m, 1, 1) == '#' end
local T, IMAX = ARGV[1], ARGV[2]
local conns, ucount, hb, inactive, pods =
  T .. ':conns', T .. ':ucount', T .. ':hb', T .. ':inactive', T .. ':pods'
local alast = T .. ':alast'
local linger, presq = T .. ':linger', T .. ':presq'
local function inbox(pod) return T .. ':inbox:' .. pod end
-- A user's connections: connection id -> pod (where its events go).
local function uconns(u) return T .. ':uconns:' .. u end
local function pods_of(u)
  local out, seen = {}, {}
  for _, p in ipairs(rc('HVALS', uconns(u))) do
    if not seen[p] then
      seen[p] = true
      out[#out + 1] = p
    end
  end
  return out
end
-- Presence transitions, for the pod that caused them to publish to the
-- presence topic (an outbox: entries go once published; see `PRESENCE_DUE`).
local function presence_out(kind, users, ats)
  return rc('XADD', presq, 'MAXLEN', '~', 100000, '*', 'k', kind,
    'u', table.concat(users, ','), 'a', ats)
end
local function to_inbox(pod, ...)
  return rc('XADD', inbox(pod), 'MAXLEN', '~', IMAX, '*', ...)
end
local function close_on(owner, m, reason)
  to_inbox(pod_of(owner), 'o', 'close', 'm', m, 'w', owner, 'r', reason)
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
      if rc('HINCRBY', ucount, u, -1) <= 0 then
        rc('HDEL', ucount, u)
        -- The user's last connection: offline once the linger has passed
        -- without a new one (`PRESENCE_DUE`).
        rc('ZADD', linger, now, u)
      end
      rc('HDEL', uconns(u), conn_of(m))
    end
  end
end
-- A pod joins (SADD) or leaves (SREM) topics: the topic's pod set and the
-- pod's topic set, kept together.
local function topic_interest(cmd, pod, list)
  for _, t in ipairs(list) do
    rc(cmd, T .. ':tpods:' .. t, pod)
    rc(cmd, T .. ':ptopics:' .. pod, t)
    if cmd == 'SREM' then rc('HDEL', T .. ':tcount:' .. t, pod) end
  end
end
-- A pod is gone (drained, or dead): its topic interest and inbox go with it.
local function drop_pod(pod)
  local pt = T .. ':ptopics:' .. pod
  local ts = rc('SMEMBERS', pt)
  for _, t in ipairs(ts) do
    rc('SREM', T .. ':tpods:' .. t, pod)
    rc('HDEL', T .. ':tcount:' .. t, pod)
  end
  rc('DEL', pt, inbox(pod))
  rc('ZREM', pods, pod)
end
-- Up to where the log's events may be gone when it holds none (`lgone`): the
-- log's last generated id moves with presence transitions too (`plog`), so an
-- empty log alone does not say that events were lost.
local lgone = T .. ':lgone'
-- No log (never written, or Redis lost its data): create it empty, so that its
-- last generated id says where later events start (every event read before is
-- older). Returns that id.
local function create_log()
  local id = rc('XADD', KEYS[1], '*', 'x', '')
  rc('XDEL', KEYS[1], id)
  rc('SET', lgone, id)
  return id
end
-- Trim the log to an age (`MINID`, `~` or exact), noting how far it went.
local function age_trim(minid, approx)
  local n
  if approx then n = rc('XTRIM', KEYS[1], 'MINID', '~', minid)
  else n = rc('XTRIM', KEYS[1], 'MINID', minid) end
  if n > 0 then rc('SET', lgone, minid) end
end
-- A stream's last generated id and its first retained entry's ('0-0': none);
-- then whether it lost none of its entries but by `XDEL` (Redis 7 says;
-- `false` when it cannot be told).
local function ends(k)
  local last, first, added, len, maxdel = '0-0', '0-0', nil, nil, '0-0'
  local info = rc('XINFO', 'STREAM', k)
  for x = 1, #info, 2 do
    local f, v = info[x], info[x + 1]
    if f == 'last-generated-id' then last = v
    elseif f == 'first-entry' and type(v) == 'table' then first = v[1]
    elseif f == 'entries-added' then added = v
    elseif f == 'length' then len = v
    elseif f == 'max-deleted-entry-id' then maxdel = v
    end
  end
  -- The only `XDEL` of a log is `create_log`'s, once.
  local whole = added ~= nil and len ~= nil
    and added - len == ((maxdel ~= '0-0') and 1 or 0)
  return last, first, whole
end
local function sid_gt(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
-- Presence transitions have a log of their own beside the log (`plog`, trimmed
-- the same way): a storm of them (every user of a restarted pod coming back)
-- must not push the events other streams resume from out of the history.
-- Their ids are the log's sequence: each is after every id of both logs, and
-- the log's last generated id is moved past it, so that ids stay one order.
local plog, PTOPIC = T .. ':plog', '#presence'
local plast = nil
local function presence_append(hmax, ...)
  if not plast then
    if rc('EXISTS', KEYS[1]) == 0 then plast = create_log() else plast = ends(KEYS[1]) end
    if rc('EXISTS', plog) == 1 then
      local p = ends(plog)
      if sid_gt(p, plast) then plast = p end
    end
  end
  local t = rc('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local ms, seq = string.match(plast, '^(%d+)-(%d+)$')
  local id
  if now > tonumber(ms) then
    id = string.format('%d-0', now)
  else
    id = ms .. '-' .. (tonumber(seq) + 1)
  end
  rc('XADD', plog, 'MAXLEN', '~', hmax, id, ...)
  rc('XSETID', KEYS[1], id)
  plast = id
  return id
end
local function last_all()
  local a = rc('GET', alast)
  if a then return a end
  return '0-0'
end
-- A dead pod's inbox holds, of the user events only it held (marked `s`),
-- those it had not read (a pod deletes them as it reads them): each is given to
-- its user now. If the user
-- resumed elsewhere (Last-Event-ID) after it was published, the resume
-- replayed it: nothing to do. If the user has connections on other pods
-- (opened since, without Last-Event-ID), it is published to them again, under a
-- new id. Otherwise it waits as pending, under its own id (a resume then finds
-- it in the log and drops the pending copy). Returns {pending, again, replayed}.
local function salvage(pod, now, maxp, hmax)
  local rows = rc('XRANGE', inbox(pod), '-', '+')
  local out = {0, 0, 0}
  for _, row in ipairs(rows) do
    local f = {}
    for x = 1, #row[2], 2 do f[row[2][x]] = row[2][x + 1] end
    if f.i and f.s and f.k == 'u' then
      local ms = tonumber(string.match(f.i, '^(%d+)-'))
      for u in string.gmatch(f.s, '[^,]+') do
        local ps = {}
        for _, p in ipairs(pods_of(u)) do
          if p ~= pod then ps[#ps + 1] = p end
        end
        local resumed = rc('ZSCORE', T .. ':resumed', u)
        if resumed and ms <= tonumber(resumed) then
          out[3] = out[3] + 1
        elseif #ps > 0 then
          local id = rc('XADD', KEYS[1], 'MAXLEN', '~', hmax, '*',
            'e', f.e, 'd', f.d, 'k', 'u', 't', u, 'ns', f.ns)
          local pa = last_all()
          for _, p in ipairs(ps) do
            if #ps == 1 then
              to_inbox(p, 'i', id, 'p', pa, 'e', f.e, 'd', f.d, 'k', 'u', 't', u, 'ns', f.ns,
                's', u, 'x', f.x or '0')
            else
              to_inbox(p, 'i', id, 'p', pa, 'e', f.e, 'd', f.d, 'k', 'u', 't', u, 'ns', f.ns)
            end
          end
          out[2] = out[2] + 1
        elseif tonumber(f.x or '0') > now and maxp > 0 then
          local k = T .. ':pending:' .. u
          local n = rc('RPUSH', k, f.i .. ' ' .. f.x .. ' ' .. f.e .. '\n' .. f.d)
          if n > maxp then rc('LTRIM', k, -maxp, -1) end
          if rc('PTTL', k) < tonumber(f.x) - now then rc('PEXPIRE', k, tonumber(f.x) - now) end
          out[1] = out[1] + 1
        end
      end
    end
  end
  rc('DEL', inbox(pod))
  return out
end
"#;

/// Register a batch of new connections, and this pod's topic interest changes.
/// ARGV: tag, imax, now_ms, pod, minid ('0' for none), history max, what, n, n
/// topics to leave, m, m topics to join, c, c (topic, this pod's streams on
/// it) pairs, then per connection (member, serial,
/// mode, resume stream id, topics comma separated); mode `n` new (take pending),
/// `r` resume after the stream id, `x` resume from an unknown point (drop
/// pending). `what`: `full` (one tag holds everything), `reg` (a partition: the
/// registry, pending and user events), `bcast` (with partitions, the broadcasts'
/// tag: topic interest, and the replay and marker of broadcasts and topics).
/// A connection batch ends with a sync marker in this pod's inbox: once the pod
/// has read it, it has read everything routed to it up to the registration.
/// A user's first connection that is not back within the linger is a
/// presence transition: written to the outbox for this pod to publish.
/// Returns `{last log id, calls, {pending or replay entries per connection},
/// first retained log id (an empty log: up to where its events may be gone),
/// presence outbox id or '', {users online}, first
/// retained and last generated id of the presence log (when a presence stream
/// resumed, '' otherwise)}`.
const REGISTER: &str = r#"
local now, pod, what = ARGV[3], ARGV[4], ARGV[7]
local registry = what ~= 'bcast'
local i = 8
local nleave = tonumber(ARGV[i])
local leaves = {}
for j = 1, nleave do leaves[j] = ARGV[i + j] end
i = i + nleave + 1
local njoin = tonumber(ARGV[i])
local joins = {}
for j = 1, njoin do joins[j] = ARGV[i + j] end
i = i + njoin + 1
topic_interest('SREM', pod, leaves)
topic_interest('SADD', pod, joins)
-- This pod's stream counts of topics that changed (presence counts).
local ncount = tonumber(ARGV[i])
for j = 1, ncount do
  local t, n = ARGV[i + 2 * j - 1], ARGV[i + 2 * j]
  if n == '0' then rc('HDEL', T .. ':tcount:' .. t, pod) else rc('HSET', T .. ':tcount:' .. t, pod, n) end
end
i = i + 2 * ncount + 1
local members, owner_args, hb_args, modes, sids, tops = {}, {}, {}, {}, {}, {}
local regs = {}
for k = i, #ARGV, 5 do
  local m = ARGV[k]
  members[#members + 1] = m
  modes[#modes + 1] = ARGV[k + 2]
  sids[#sids + 1] = ARGV[k + 3]
  tops[#tops + 1] = ARGV[k + 4]
  if not internal(m) then
    regs[#regs + 1] = m
    owner_args[#owner_args + 1] = m
    owner_args[#owner_args + 1] = pod .. '/' .. ARGV[k + 1] .. '/' .. now .. '/' .. ARGV[k + 4]
    hb_args[#hb_args + 1] = now
    hb_args[#hb_args + 1] = m
  end
end
if #members == 0 then return {'0-0', calls, {}, '0-0', '', {}} end
local online = {}
if registry and #regs > 0 then
  local old = chunked('HMGET', conns, regs, 1)
  chunked('HSET', conns, owner_args, 2)
  chunked('ZADD', hb, hb_args, 2)
  chunked('ZREM', inactive, regs, 1)
  for j, m in ipairs(regs) do
    local u = user_of(m)
    local o = old[j]
    if not o then
      -- A first connection is online unless it ends a linger.
      if rc('HINCRBY', ucount, u, 1) == 1 and rc('ZREM', linger, u) == 0 then
        online[#online + 1] = u
      end
      rc('HSET', uconns(u), conn_of(m), pod)
    elseif pod_of(o) ~= pod then
      -- The same user and connection id on another pod: that stream is replaced.
      close_on(o, m, 'replaced')
      rc('HSET', uconns(u), conn_of(m), pod)
    end
  end
end
local pid = ''
if #online > 0 then pid = presence_out('on', online, now) end
local resumes = false
for j = 1, #members do
  if modes[j] == 'r' then resumes = true end
end
-- The log's true last id and first retained entry (after the exact age trim a
-- resume needs), from one XINFO.
if resumes and ARGV[5] ~= '0' then age_trim(ARGV[5], false) end
local last_id, first_id = '0-0', '0-0'
if rc('EXISTS', KEYS[1]) == 0 then
  last_id = create_log()
else
  local whole
  last_id, first_id, whole = ends(KEYS[1])
  -- Up to where events may be gone: the first retained one once some were
  -- trimmed; else where the log was created or emptied, when that is known.
  if first_id == '0-0' or whole then
    first_id = rc('GET', lgone) or first_id
  end
end
-- A presence stream's resume reads the presence log too (from the oldest such
-- resume point), and is exact only where it retains what came after.
local wfrom, pfirst, plastg = nil, '', ''
for j = 1, #members do
  if modes[j] == 'r' and internal(members[j]) and (wfrom == nil or sid_gt(wfrom, sids[j])) then
    wfrom = sids[j]
  end
end
if wfrom and rc('EXISTS', plog) == 1 then
  if ARGV[5] ~= '0' then rc('XTRIM', plog, 'MINID', ARGV[5]) end
  plastg, pfirst = ends(plog)
else
  wfrom = nil
end
-- Resumes are remembered for a while: a dead pod's unread events for a user who
-- resumed since were replayed by that resume (see `salvage`).
if registry and resumes then
  local rms = string.match(last_id, '^(%d+)-')
  local z = {}
  for j = 1, #members do
    if modes[j] == 'r' then
      z[#z + 1] = rms
      z[#z + 1] = user_of(members[j])
    end
  end
  chunked('ZADD', T .. ':resumed', z, 2)
end
local rows = {}
-- The rows resumes may need, indexed once by what they are for (every `all`
-- row; per user; per topic), so that each resume looks only at its own rows
-- after its point: a batch of resumes costs the rows read plus what it
-- replays, not resumes × rows.
local alls, by = {}, {}
local function index(list)
  for _, row in ipairs(list) do
    rows[#rows + 1] = row
    local r = #rows
    local f, k, t = row[2], nil, nil
    for x = 1, #f, 2 do
      if f[x] == 'k' then k = f[x + 1] elseif f[x] == 't' then t = f[x + 1] end
    end
    if k == 'a' then
      alls[#alls + 1] = r
    elseif t and (k == 'u' or k == 't') then
      for x in string.gmatch(t, '[^,]+') do
        local l = by[k .. ':' .. x]
        if not l then
          l = {}
          by[k .. ':' .. x] = l
        end
        if l[#l] ~= r then l[#l + 1] = r end
      end
    end
  end
end
if resumes then
  local from = nil
  for j = 1, #members do
    if modes[j] == 'r' and (from == nil or sid_gt(from, sids[j])) then from = sids[j] end
  end
  index(rc('XRANGE', KEYS[1], '(' .. from, '+', 'COUNT', ARGV[6]))
  -- After the log's rows: a list's ids still ascend (the presence log's are
  -- later than any presence row the log held before it had one).
  if wfrom then index(rc('XRANGE', plog, '(' .. wfrom, '+', 'COUNT', ARGV[6])) end
end
-- Appends to `picked` the rows of list `l` (row numbers, ascending) after `sid`.
local function take(picked, l, sid)
  if not l then return end
  local lo, hi = 1, #l + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if sid_gt(rows[l[mid]][1], sid) then hi = mid else lo = mid + 1 end
  end
  for x = lo, #l do picked[#picked + 1] = l[x] end
end
local out = {}
for j, m in ipairs(members) do
  local u = user_of(m)
  local pk = T .. ':pending:' .. u
  if modes[j] == 'n' then
    out[j] = {}
    if registry then
      out[j] = rc('LRANGE', pk, 0, -1)
      if #out[j] > 0 then rc('DEL', pk) end
    end
  else
    if registry then rc('DEL', pk) end
    out[j] = {}
    if modes[j] == 'r' then
      local picked = {}
      take(picked, alls, sids[j])
      take(picked, by['u:' .. u], sids[j])
      for x in string.gmatch(tops[j], '[^,]+') do take(picked, by['t:' .. x], sids[j]) end
      -- In log order, each row once (a row may name several of its topics);
      -- a presence stream's come from two logs: by id.
      if internal(m) then
        table.sort(picked, function(a, b) return sid_gt(rows[b][1], rows[a][1]) end)
      else
        table.sort(picked)
      end
      local prev = nil
      for _, r in ipairs(picked) do
        if r ~= prev then out[j][#out[j] + 1] = rows[r] end
        prev = r
      end
    end
  end
end
to_inbox(pod, 'o', 'sync', 'p', last_all(), 'l', last_id)
return {last_id, calls, out, first_id, pid, online, pfirst, plastg}
"#;

/// Publish jobs (a publish request's events for this tag: one event, or a
/// batch's, in order). Each event is appended to the log (the history, and the
/// source of its id) and routed: `all` to the broadcast stream every pod reads;
/// users and topics to the inbox of each pod with a connection for them (once
/// per pod); a targeted user with no connection anywhere keeps it as pending.
/// An inbox entry carries `p`, the last broadcast id before it, so the pod
/// merges its two sources in log order; the broadcast entries of the whole call
/// are written after its inbox entries (the reader's rule, see the prelude).
///
/// Every job is recorded, so that a job sent again is recognised and answered
/// with its first outcome instead of being appended twice: under its
/// `Idempotency-Key` (`{p}:idem:<key>`, for the window: a repeat from any pod),
/// and under the sending pod's sequence number (`{p}:applied:<pod>`, a sorted
/// set by sequence: herald's own re-send after a timed-out call). The pod sends,
/// every 64 sequences, the lowest one it has not settled; records below it are
/// dropped, so that set holds only the jobs whose outcome the pod may still ask
/// and the few settled since the last trim.
/// A record is `N` (answered with ids) or `B` (answered "buffered") then the
/// ids, comma separated.
///
/// ARGV: tag, imax, max_pending, maxlen, now_ms, pod, lowest unsettled
/// sequence, window_ms, number of jobs, then per job: sequence, check (1: may
/// have been applied already), key ('' for none), answer flag (N/B), publish unix
/// ns, number of events, then per event: event, data, kind (a/u/t), targets
/// (comma separated), ttl_ms. (The age trim of the log runs with the cleanup
/// job, not per event.)
/// Returns `{calls, dropped, then per job: 'F' (fresh) or 'R' (a repeat under
/// its key) or 'S' (this pod's own re-send), followed by the record}`.
const PUBLISH: &str = r#"
local maxp, hmax, now, pod = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6]
local low, window, njobs = ARGV[7], ARGV[8], tonumber(ARGV[9])
local applied = T .. ':applied:' .. pod
local dropped = 0
local pa = nil
local bcasts = {}
local topic_pods = {}
-- q: the event's publish token, `<pod>/<seq>.<index>` (the publishing pod,
-- its job sequence, the event's place in the job), carried to the pods that
-- deliver it: they drop an event whose token they have passed, the one repeat
-- no record here can catch (a job sent again after Redis lost its data).
local function publish_one(e, d, kind, names, ttl, ns, q)
  local id
  if kind == 't' and names == PTOPIC then
    id = presence_append(hmax, 'e', e, 'd', d, 'k', kind, 't', names, 'ns', ns)
  else
    id = rc('XADD', KEYS[1], 'MAXLEN', '~', hmax, '*',
      'e', e, 'd', d, 'k', kind, 't', names, 'ns', ns)
    if plast then plast = id end
  end
  if kind == 'a' then
    bcasts[#bcasts + 1] = {id, e, d, names, ns, q}
    pa = id
    return id
  end
  local seen, found, order, sole = {}, {}, {}, {}
  local entry = nil
  for x in string.gmatch(names, '[^,]+') do
    if not seen[x] then
      seen[x] = true
      local ps
      if kind == 'u' then
        ps = pods_of(x)
      else
        -- A batch's events to one topic (presence transitions, say) ask once.
        ps = topic_pods[x]
        if not ps then
          ps = rc('SMEMBERS', T .. ':tpods:' .. x)
          topic_pods[x] = ps
        end
      end
      if kind == 'u' and #ps == 1 then
        -- Only this pod holds x: if it dies before reading the event, the
        -- cleanup gives the event to x elsewhere (SALVAGE).
        sole[ps[1]] = (sole[ps[1]] and (sole[ps[1]] .. ',') or '') .. x
      end
      if #ps == 0 and kind == 'u' and ttl > 0 and maxp > 0 then
        entry = entry or (id .. ' ' .. (now + ttl) .. ' ' .. e .. '\n' .. d)
        local k = T .. ':pending:' .. x
        local n = rc('RPUSH', k, entry)
        if n > maxp then
          rc('LTRIM', k, -maxp, -1)
          dropped = dropped + n - maxp
        end
        if rc('PTTL', k) < ttl then rc('PEXPIRE', k, ttl) end
      end
      for _, p in ipairs(ps) do
        if not found[p] then
          found[p] = true
          order[#order + 1] = p
        end
      end
    end
  end
  if #order > 0 then
    pa = pa or last_all()
    for _, p in ipairs(order) do
      if sole[p] then
        to_inbox(p, 'i', id, 'p', pa, 'e', e, 'd', d, 'k', kind, 't', names, 'ns', ns,
          'q', q, 's', sole[p], 'x', now + ttl)
      else
        to_inbox(p, 'i', id, 'p', pa, 'e', e, 'd', d, 'k', kind, 't', names, 'ns', ns, 'q', q)
      end
    end
  end
  return id
end
if low ~= '0' then rc('ZREMRANGEBYSCORE', applied, '-inf', '(' .. low) end
local out = {}
local records = {}
local i = 10
for _ = 1, njobs do
  local seq, check, key, flag, ns, n =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5])
  i = i + 6
  local prior, how = nil, nil
  if check == '1' then
    local r = rc('ZRANGEBYSCORE', applied, seq, seq)
    if r[1] then
      prior = string.sub(r[1], #seq + 2)
      how = 'S'
    end
  end
  if not prior and key ~= '' then
    prior = rc('GET', T .. ':idem:' .. key)
    how = 'R'
  end
  if prior then
    out[#out + 1] = how .. prior
    i = i + 5 * n
  else
    local ids = {}
    for x = 1, n do
      ids[#ids + 1] = publish_one(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
        tonumber(ARGV[i + 4]), ns, pod .. '/' .. seq .. '.' .. x)
      i = i + 5
    end
    local rec = flag .. table.concat(ids, ',')
    if key ~= '' and window ~= '0' then
      rc('SET', T .. ':idem:' .. key, rec, 'PX', window)
    end
    records[#records + 1] = seq
    records[#records + 1] = seq .. ':' .. rec
    out[#out + 1] = 'F' .. rec
  end
end
for _, b in ipairs(bcasts) do
  rc('XADD', T .. ':all', 'MAXLEN', '~', IMAX, b[1], 'e', b[2], 'd', b[3], 'k', 'a', 't', b[4], 'ns', b[5], 'q', b[6])
end
if #bcasts > 0 then rc('SET', alast, bcasts[#bcasts][1]) end
if #records > 0 then chunked('ZADD', applied, records, 2) end
if low ~= '0' then
  -- A pod that is gone leaves at most its last records behind.
  rc('PEXPIRE', applied, 3600000)
end
local reply = {calls, dropped}
for _, o in ipairs(out) do reply[#reply + 1] = o end
return reply
"#;

/// Forget connections that ended. ARGV: tag, imax, now_ms, then (member,
/// expected owner `pod/serial`) pairs: an entry is removed only while it still
/// names that exact connection (a newer one with the same ids is left alone).
/// Returns `{calls, removed}`.
const REMOVE: &str = r#"
local now = ARGV[3]
local members, expect, seen = {}, {}, {}
for i = 4, #ARGV, 2 do
  if not seen[ARGV[i]] then
    seen[ARGV[i]] = true
    members[#members + 1] = ARGV[i]
    expect[#expect + 1] = ARGV[i + 1]
  end
end
local owners = chunked('HMGET', conns, members, 1)
local gone, gone_owners = {}, {}
for j, m in ipairs(members) do
  if owners[j] and owner_is(owners[j], expect[j]) then
    gone[#gone + 1] = m
    gone_owners[#gone_owners + 1] = owners[j]
  end
end
forget(gone, gone_owners, now)
return {calls, #gone}
"#;

/// End a connection wherever it lives (a disconnect sent to another pod).
/// ARGV: tag, imax, now_ms, member. Returns `{calls, owner or nil}`.
const DISCONNECT: &str = r#"
local now, m = ARGV[3], ARGV[4]
local o = rc('HGET', conns, m)
if not o then return {calls, false} end
forget({m}, {o}, now)
close_on(o, m, 'disconnected')
return {calls, o}
"#;

/// Put back connections a heartbeat found missing (cleaned while this pod could
/// not reach Redis, or Redis restarted empty), with this pod's interest in their
/// users. ARGV: tag, imax, now_ms, pod, then (member, serial, connected ms,
/// topics, held) per connection: `held` '0' for one the pod no longer holds
/// (it ended between the heartbeat's listing and its `ZADD`, which put its
/// heartbeat back after its removal): only that heartbeat goes. Entries
/// another pod owns are left alone. A user back from offline is a presence
/// transition, as in `REGISTER`.
/// Returns `{calls, restored, {members}, presence outbox id or '', {users}}`.
const REREGISTER: &str = r#"
local now, pod = ARGV[3], ARGV[4]
local members, values, held = {}, {}, {}
for i = 5, #ARGV, 5 do
  members[#members + 1] = ARGV[i]
  values[#values + 1] = pod .. '/' .. ARGV[i + 1] .. '/' .. ARGV[i + 2] .. '/' .. ARGV[i + 3]
  held[#held + 1] = ARGV[i + 4] == '1'
end
local owners = chunked('HMGET', conns, members, 1)
local set, fixed, online, ghosts = {}, {}, {}, {}
for j, m in ipairs(members) do
  if not owners[j] and not held[j] then
    ghosts[#ghosts + 1] = m
  elseif not owners[j] then
    local u = user_of(m)
    set[#set + 1] = m
    set[#set + 1] = values[j]
    fixed[#fixed + 1] = m
    if rc('HINCRBY', ucount, u, 1) == 1 and rc('ZREM', linger, u) == 0 then
      online[#online + 1] = u
    end
    rc('HSET', uconns(u), conn_of(m), pod)
  end
end
if #fixed > 0 then
  chunked('HSET', conns, set, 2)
  chunked('ZREM', inactive, fixed, 1)
end
if #ghosts > 0 then chunked('ZREM', hb, ghosts, 1) end
local pid = ''
if #online > 0 then pid = presence_out('on', online, now) end
return {calls, #fixed, fixed, pid, online}
"#;

/// The cleanup job: mark connections whose heartbeat is older than the cutoff
/// inactive, drop dead pods (their topic interest; their inbox, after giving
/// its unread user events to their users: `salvage`), bound the inactive set
/// and the record of resumes, trim the log to the history's age. Safe to run
/// on every pod at once.
/// ARGV: tag, imax, now_ms, cutoff_ms, limit, inactive_keep_ms, inactive_cap,
/// minid ('0' for none), pods ('1' where the pod set lives), max_pending,
/// history max, resumes_keep_ms, then pods found dead elsewhere whose inbox here
/// goes too. Returns `{calls, marked, pods dropped, {dead pods}, salvaged to
/// pending, published again, already replayed}`.
const CLEANUP: &str = r#"
local now, cutoff = tonumber(ARGV[3]), ARGV[4]
local maxp, hmax = tonumber(ARGV[10]), ARGV[11]
if ARGV[8] ~= '0' then
  age_trim(ARGV[8], true)
  rc('XTRIM', plog, 'MINID', '~', ARGV[8])
end
-- Stale connections first: a dead pod's users are no longer its when its
-- inbox is salvaged.
local stale = rc('ZRANGEBYSCORE', hb, '-inf', cutoff, 'LIMIT', 0, ARGV[5])
if #stale > 0 then
  local owners = chunked('HMGET', conns, stale, 1)
  forget(stale, owners, now)
end
local saved = {0, 0, 0}
local function salvaged(pod)
  local r = salvage(pod, now, maxp, hmax)
  for j = 1, 3 do saved[j] = saved[j] + r[j] end
end
for k = 13, #ARGV do salvaged(ARGV[k]) end
local dead = {}
if ARGV[9] == '1' then
  dead = rc('ZRANGEBYSCORE', pods, '-inf', cutoff, 'LIMIT', 0, 100)
  for _, p in ipairs(dead) do
    salvaged(p)
    drop_pod(p)
  end
end
rc('ZREMRANGEBYSCORE', inactive, '-inf', now - tonumber(ARGV[6]))
rc('ZREMRANGEBYRANK', inactive, 0, -(tonumber(ARGV[7]) + 1))
rc('ZREMRANGEBYSCORE', T .. ':resumed', '-inf', now - tonumber(ARGV[12]))
if ARGV[9] == '1' then rc('ZREMRANGEBYSCORE', T .. ':blocked', '-inf', now) end
return {calls, #stale, #dead, dead, saved[1], saved[2], saved[3]}
"#;

/// Cluster-wide counts. ARGV: tag, imax, live-pod cutoff_ms.
/// Returns `{calls, connections, users, pods, inactive, lingering users}`.
const STATS: &str = r#"
local c = rc('HLEN', conns)
local u = rc('HLEN', ucount)
local p = rc('ZCOUNT', pods, ARGV[3], '+inf')
local i = rc('ZCARD', inactive)
local l = rc('ZCARD', linger)
return {calls, c, u, p, i, l}
"#;

/// Presence, every tick on pods with a presence stream and with every
/// cleanup: users whose linger has passed (no connection since their last one
/// ended) go offline, into the outbox; and outbox entries older than the grace
/// (their pod died before publishing them, or its publish is unconfirmed) are
/// handed out again, to be published under their own idempotency key.
/// ARGV: tag, imax, now_ms, linger_ms, limit, grace_ms, count ('1': also
/// count the users online here, lingering ones included).
/// Returns `{calls, {id, kind, users, ats} per outbox entry to publish,
/// users online or -1, users gone offline now}`.
const PRESENCE_DUE: &str = r#"
local now, lms, grace = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
local out = {}
local old = rc('XRANGE', presq, '-', tostring(now - grace), 'COUNT', ARGV[5])
for _, row in ipairs(old) do
  local f = {}
  for x = 1, #row[2], 2 do f[row[2][x]] = row[2][x + 1] end
  out[#out + 1] = {row[1], f.k or '', f.u or '', f.a or ''}
end
local due = rc('ZRANGEBYSCORE', linger, '-inf', now - lms, 'WITHSCORES', 'LIMIT', 0, ARGV[5])
if #due > 0 then
  local us, ats = {}, {}
  for x = 1, #due, 2 do
    us[#us + 1] = due[x]
    ats[#ats + 1] = due[x + 1]
  end
  chunked('ZREM', linger, us, 1)
  local id = presence_out('off', us, table.concat(ats, ','))
  out[#out + 1] = {id, 'off', table.concat(us, ','), table.concat(ats, ',')}
end
local online = -1
if ARGV[7] == '1' then online = rc('HLEN', ucount) + rc('ZCARD', linger) end
return {calls, out, online, #due / 2}
"#;

/// Outbox entries published: deleted. ARGV: tag, imax, then ids.
/// Returns `{calls}`.
const PRESENCE_DONE: &str = r#"
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids > 0 then chunked('XDEL', presq, ids, 1) end
return {calls}
"#;

/// Presence counts on one tag: live connections per user (those whose
/// heartbeat is not older than the cutoff) and, where the topics live,
/// streams per topic summed over the live pods. ARGV: tag, imax, cutoff_ms,
/// number of users, users, then topics. Returns `{calls, {count per user},
/// {count per topic}}`.
const PRESENCE_COUNT: &str = r#"
local cutoff, nu = tonumber(ARGV[3]), tonumber(ARGV[4])
local users, topics = {}, {}
for i = 5, 4 + nu do
  local u = ARGV[i]
  local n = 0
  local cs = rc('HKEYS', uconns(u))
  if #cs > 0 then
    local ms = {}
    for j, c in ipairs(cs) do ms[j] = u .. '/' .. c end
    for _, sc in ipairs(rc('ZMSCORE', hb, unpack(ms))) do
      if sc and tonumber(sc) >= cutoff then n = n + 1 end
    end
  end
  users[#users + 1] = n
end
local live = {}
local function alive(p)
  if live[p] == nil then
    local sc = rc('ZSCORE', pods, p)
    live[p] = sc ~= false and sc ~= nil and tonumber(sc) >= cutoff
  end
  return live[p]
end
for i = 5 + nu, #ARGV do
  local n = 0
  local h = rc('HGETALL', T .. ':tcount:' .. ARGV[i])
  for x = 1, #h, 2 do
    if alive(h[x]) then n = n + tonumber(h[x + 1]) end
  end
  topics[#topics + 1] = n
end
return {calls, users, topics}
"#;

/// One user's live connections: `{calls, {member, owner value, heartbeat} per
/// connection whose heartbeat is not older than the cutoff}`.
/// ARGV: tag, imax, cutoff_ms, user.
const CONNECTIONS: &str = r#"
local cutoff, u = tonumber(ARGV[3]), ARGV[4]
local cs = rc('HKEYS', uconns(u))
local out = {}
if #cs == 0 then return {calls, out} end
local ms = {}
for j, c in ipairs(cs) do ms[j] = u .. '/' .. c end
local owners = rc('HMGET', conns, unpack(ms))
local beats = rc('ZMSCORE', hb, unpack(ms))
for j, m in ipairs(ms) do
  if owners[j] and beats[j] and tonumber(beats[j]) >= cutoff then
    out[#out + 1] = {cs[j], owners[j], beats[j]}
  end
end
return {calls, out}
"#;

/// The pod's heartbeat and delivery probe: its entry in the pod set (where
/// `pods` is '1'), and a probe into its own inbox that its reader must see come
/// back. ARGV: tag, imax, now_ms, pod, probe number, inbox ttl_ms, pods.
/// Returns `{calls, 1 when the pod was missing from the set, probe stream id}`.
const PROBE: &str = r#"
local added = 0
if ARGV[7] == '1' then added = rc('ZADD', pods, ARGV[3], ARGV[4]) end
local id = to_inbox(ARGV[4], 'o', 'probe', 'n', ARGV[5])
rc('PEXPIRE', inbox(ARGV[4]), ARGV[6])
return {calls, added, id}
"#;

/// Refuse a user's connects everywhere until a time (`reconnect=false`): an
/// entry (`k` = `b`) in the log and the broadcast stream, which every pod reads
/// in order and acts on (it ends the user's streams there and answers its
/// connects 204), and the set of blocks a starting pod loads (`{p}:blocked`,
/// user by deadline; the cleanup drops the past ones). Resumes never replay
/// such an entry. ARGV: tag, imax, user, until_ms, history max.
/// Returns `{calls, id}`.
const BLOCK: &str = r#"
local id = rc('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'k', 'b', 't', ARGV[3], 'x', ARGV[4])
rc('XADD', T .. ':all', 'MAXLEN', '~', IMAX, id, 'k', 'b', 't', ARGV[3], 'x', ARGV[4])
rc('SET', alast, id)
rc('ZADD', T .. ':blocked', ARGV[4], ARGV[3])
return {calls, id}
"#;

/// A draining pod leaves: its topic interest, inbox and pod entry (where
/// `pods` is '1'; elsewhere its inbox). ARGV: tag, imax, pod, pods.
/// Returns `{calls}`.
const LEAVE: &str = r#"
if ARGV[4] == '1' then drop_pod(ARGV[3]) else rc('DEL', inbox(ARGV[3])) end
return {calls}
"#;

/// Where a starting pod begins to read: the last ids of its inbox and of the
/// broadcast stream, and the log's last generated id (the log is created when
/// missing), and the users refused for now (`BLOCK`). ARGV: tag, imax, pod,
/// now_ms. Returns `{calls, inbox last, broadcast last, log last, {user,
/// until, …}}`.
const BOOT: &str = r#"
local function last_of(k)
  local r = rc('XREVRANGE', k, '+', '-', 'COUNT', 1)
  if #r > 0 then return r[1][1] end
  return '0-0'
end
local l = '0-0'
if rc('EXISTS', KEYS[1]) == 0 then
  l = create_log()
else
  local info = rc('XINFO', 'STREAM', KEYS[1])
  for k = 1, #info, 2 do
    if info[k] == 'last-generated-id' then l = info[k + 1] end
  end
end
-- The inbox by its last generated id: a pod deletes entries it has read, so an
-- emptied inbox is not a recreated one.
local ib = '0-0'
if rc('EXISTS', inbox(ARGV[3])) == 1 then
  local info = rc('XINFO', 'STREAM', inbox(ARGV[3]))
  for k = 1, #info, 2 do
    if info[k] == 'last-generated-id' then ib = info[k + 1] end
  end
end
-- The users refused until a later time (`BLOCK`), with their deadlines.
local bl = rc('ZRANGEBYSCORE', T .. ':blocked', ARGV[4], '+inf', 'WITHSCORES')
return {calls, ib, last_of(T .. ':all'), l, bl}
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
    pub probe: Script,
    pub leave: Script,
    pub boot: Script,
    pub block: Script,
    pub presence_due: Script,
    pub presence_done: Script,
    pub presence_count: Script,
    pub connections: Script,
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
            probe: s(PROBE),
            leave: s(LEAVE),
            boot: s(BOOT),
            block: s(BLOCK),
            presence_due: s(PRESENCE_DUE),
            presence_done: s(PRESENCE_DONE),
            presence_count: s(PRESENCE_COUNT),
            connections: s(CONNECTIONS),
        }
    }
}

/// Every script's name and full body (prelude included): a test loads each
/// into a real Redis, which compiles it.
pub fn bodies() -> Vec<(&'static str, String)> {
    [
        ("register", REGISTER),
        ("publish", PUBLISH),
        ("remove", REMOVE),
        ("disconnect", DISCONNECT),
        ("reregister", REREGISTER),
        ("cleanup", CLEANUP),
        ("stats", STATS),
        ("probe", PROBE),
        ("leave", LEAVE),
        ("boot", BOOT),
        ("block", BLOCK),
        ("presence_due", PRESENCE_DUE),
        ("presence_done", PRESENCE_DONE),
        ("presence_count", PRESENCE_COUNT),
        ("connections", CONNECTIONS),
    ]
    .into_iter()
    .map(|(name, body)| (name, format!("{PRELUDE}{body}")))
    .collect()
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    /// The scripts tell presence transitions by the topic's name, written in
    /// Lua: it must be the one herald publishes them to.
    #[test]
    fn the_scripts_name_the_presence_topic_herald_publishes_to() {
        let named = format!(
            "local plog, PTOPIC = T .. ':plog', '{}'",
            crate::presence::TOPIC
        );
        assert!(super::PRELUDE.contains(&named), "PRELUDE lacks {named:?}");
    }
}
