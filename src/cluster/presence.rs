//! Presence in a cluster: the transitions the registry scripts decide, made
//! into presence events; the linger's deadlines; the presence queries.
//!
//! ## Transitions, exactly once
//! A user's connection count lives in its tag's `ucount` (see [`super`]). The
//! register script sees a count go from 0 to 1: unless the user was lingering
//! (its last connection ended less than `--presence-linger` ago: `{p}:linger`,
//! user → when), that is `online`. The scripts that remove connections
//! (an end, a forwarded disconnect, the stale-connection cleanup) put a user
//! whose count reaches 0 into the linger. [`sweep`] takes the users whose linger
//! has passed: `offline`. Each transition is decided inside one script, so
//! exactly one pod sees it, and written in the same script to the tag's
//! outbox (`{p}:presq`). That pod then publishes the entry to the presence
//! topic (ids, history, resume and routing by interest come with it), under
//! the idempotency key `presence:<tag>:<entry id>`, and deletes it. An entry a
//! pod did not confirm (it died, or Redis failed in between) is handed out
//! again by a later sweep and published under the same key: Redis answers
//! the first outcome instead of publishing twice.
//!
//! ## Cost
//! Per connect: at most one command more than before (`ZREM` of the linger, on
//! a user's first connection only), per end one (`ZADD` to the linger, on a
//! user's last only); one outbox entry per register batch that has
//! transitions; each transition published, one `XSETID` more than a topic event
//! (its id is the log's; see `{p}:plog` in [`super`]), and per publish call a
//! `TIME` and the two logs' `XINFO`. Heartbeats: nothing. The sweep runs every
//! `--presence-linger`/4 on pods with a presence stream open, and with every
//! cleanup on every pod
//! (which also counts the users online, for `herald_presence_online_users`).

use std::sync::Arc;
use std::time::Duration;

use fred::types::Value;
use tracing::debug;

use super::{Cluster, Source};
use crate::clock;
use crate::metrics as m;
use crate::presence::{self, ConnInfo, Counts, Query, Transition};
use crate::seam::{PublishRequest, Published};

/// An outbox entry to publish: its transitions, with their times.
#[derive(Debug, Clone)]
pub(super) struct Outbox {
    source: u16,
    id: String,
    kind: Transition,
    users: Vec<String>,
    ats: Vec<u64>,
}

/// Entries older than this are handed out again by a sweep: their pod had
/// time to publish them (a call, then a retry).
fn grace(c: &Cluster) -> Duration {
    c.set.timeout * 3 + Duration::from_secs(2)
}

impl Outbox {
    /// From a register or re-register reply: `(outbox id, {users})`, all
    /// online at `at`.
    pub(super) fn online(
        source: u16,
        id: Option<&Value>,
        users: Option<&Value>,
        at: u64,
    ) -> Option<Outbox> {
        let id = id?.as_str()?.to_string();
        if id.is_empty() {
            return None;
        }
        let users: Vec<String> = users?
            .clone()
            .into_array()
            .into_iter()
            .filter_map(|u| u.as_str().map(|s| s.to_string()))
            .collect();
        let ats = vec![at; users.len()];
        Some(Outbox {
            source,
            id,
            kind: Transition::Online,
            users,
            ats,
        })
    }

    /// From a sweep's reply row `{id, kind, users, ats}`.
    fn from_row(source: u16, row: Value) -> Option<Outbox> {
        let f: Vec<String> = row
            .into_array()
            .into_iter()
            .map(|v| v.as_str().map(|s| s.to_string()).unwrap_or_default())
            .collect();
        let [id, kind, users, ats] = <[String; 4]>::try_from(f).ok()?;
        let kind = match kind.as_str() {
            "on" => Transition::Online,
            "off" => Transition::Offline,
            _ => return None,
        };
        let users: Vec<String> = users
            .split(',')
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        let parsed: Vec<u64> = ats
            .split(',')
            .map(|a| a.parse::<f64>().map_or(0, |x| x as u64))
            .collect();
        // An online entry carries one time for all its users.
        let ats = match parsed.as_slice() {
            [one] => vec![*one; users.len()],
            _ => parsed,
        };
        if ats.len() != users.len() {
            return None;
        }
        Some(Outbox {
            source,
            id,
            kind,
            users,
            ats,
        })
    }
}

/// Publish outbox entries to the presence topic, each under its idempotency
/// key, then delete the ones Redis took (one call per source).
pub(super) async fn publish(c: &Cluster, entries: Vec<Outbox>) {
    let mut done: Vec<(u16, String)> = Vec::new();
    for e in entries {
        let items: Vec<PublishRequest> = e
            .users
            .iter()
            .zip(&e.ats)
            .map(|(u, at)| PublishRequest {
                event: e.kind.event().to_string(),
                data: presence::data(u, *at),
                target: crate::event::Target::Topics(
                    vec![presence::TOPIC.into()].into_boxed_slice(),
                ),
                ttl_seconds: 0,
            })
            .collect();
        if items.is_empty() {
            done.push((e.source, e.id));
            continue;
        }
        let tag = &c.sources[e.source as usize].tag;
        let key = format!("presence:{tag}:{}", e.id);
        match c.publish(items, Some(&key)).await {
            Published::Ids { replayed, .. } => {
                if !replayed {
                    m::presence_events(e.kind.event(), e.users.len() as u64);
                }
                done.push((e.source, e.id));
            }
            // Held for Redis, or refused: a later sweep hands it out again.
            Published::Buffered { .. } | Published::Full => {}
        }
    }
    done.sort();
    for src in &c.sources {
        let ids: Vec<Value> = done
            .iter()
            .filter(|(s, _)| *s == src.index)
            .map(|(_, id)| Value::from(id.as_str()))
            .collect();
        if ids.is_empty() {
            continue;
        }
        let mut args = c.args(src, ids.len());
        args.extend(ids);
        c.script(src, "presence", &c.scripts.presence_done, args)
            .await;
    }
}

/// Most lingers one sweep ends per partition (a storm's departures take
/// several sweeps in a row, each one script call and one publish).
const SWEEP_LIMIT: usize = 1000;

/// Users whose linger has passed go offline, and entries no pod confirmed are
/// published again: one script per source that holds users, again while a
/// source had more than one call's worth. `count`: also set the online-users
/// gauge (the cleanup's sweep).
pub(super) async fn sweep(c: &Arc<Cluster>, count: bool) {
    for _ in 0..50 {
        if !sweep_once(c, count).await {
            return;
        }
    }
}

/// One round of [`sweep`]; whether a source may have more due.
async fn sweep_once(c: &Arc<Cluster>, count: bool) -> bool {
    if !c.is_up() {
        return false;
    }
    let now = clock::unix_ms();
    let mut entries = Vec::new();
    let mut online: Option<u64> = count.then_some(0);
    let mut more = false;
    for src in c.user_sources() {
        let mut args = c.args(src, 5);
        args.extend([
            Value::from(now as i64),
            Value::from(c.set.presence_linger.as_millis() as i64),
            Value::from(SWEEP_LIMIT as i64),
            Value::from(grace(c).as_millis() as i64),
            Value::from(if count { "1" } else { "0" }),
        ]);
        let Some(v) = c
            .script(src, "presence", &c.scripts.presence_due, args)
            .await
        else {
            online = None;
            continue;
        };
        let mut it = v.into_iter().skip(1);
        let rows = it.next().map(Value::into_array).unwrap_or_default();
        if let (Some(total), Some(n)) = (online.as_mut(), it.next().and_then(|n| n.as_u64())) {
            *total += n;
        }
        more |= it.next().and_then(|n| n.as_u64()).unwrap_or(0) as usize >= SWEEP_LIMIT;
        entries.extend(
            rows.into_iter()
                .filter_map(|r| Outbox::from_row(src.index, r)),
        );
    }
    if let Some(n) = online {
        m::set_online_users(n);
    }
    if !entries.is_empty() {
        debug!(entries = entries.len(), "presence transitions to publish");
        publish(c, entries).await;
    }
    more
}

/// On a pod with a presence stream open, sweep every linger/4 (bounded): an
/// offline comes that long after its linger.
pub(super) async fn presence_loop(c: Arc<Cluster>) {
    let period =
        (c.set.presence_linger / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if c.topics.has_subscribers(presence::TOPIC) {
            sweep(&c, false).await;
        }
    }
}

impl Cluster {
    /// `user`'s live connections in the whole cluster; `None` when Redis
    /// cannot be asked.
    pub async fn connections_of(&self, user: &str) -> Option<Vec<ConnInfo>> {
        if !self.is_up() {
            return None;
        }
        let src = self.user_source(user);
        let mut args = self.args(src, 2);
        args.push(Value::from(self.cutoff() as i64));
        args.push(Value::from(user));
        let v = self
            .script(src, "presence", &self.scripts.connections, args)
            .await?;
        let rows = v
            .into_iter()
            .nth(1)
            .map(Value::into_array)
            .unwrap_or_default();
        let mut out: Vec<ConnInfo> = rows
            .into_iter()
            .filter_map(|r| {
                let f: Vec<String> = r
                    .into_array()
                    .into_iter()
                    .map(|v| v.as_str().map(|s| s.to_string()).unwrap_or_default())
                    .collect();
                let [conn, owner, beat] = <[String; 3]>::try_from(f).ok()?;
                // `pod/serial/connected ms/topics`.
                let mut parts = owner.splitn(4, '/');
                let pod = parts.next()?.to_string();
                let _serial = parts.next();
                let connected_ms = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let topics = parts
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect();
                Some(ConnInfo {
                    conn_id: conn,
                    pod,
                    topics,
                    connected_ms,
                    heartbeat_ms: beat.parse::<f64>().map_or(0, |x| x as u64),
                })
            })
            .collect();
        out.sort_by(|a, b| (a.connected_ms, &a.conn_id).cmp(&(b.connected_ms, &b.conn_id)));
        Some(out)
    }

    /// Live connections per user and streams per topic in the whole cluster:
    /// one script per source the query touches, sent together.
    pub async fn presence(&self, q: &Query) -> Option<Counts> {
        if !self.is_up() {
            return None;
        }
        let cutoff = self.cutoff();
        let mut users: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        let mut topics: Vec<(String, u64)> = Vec::new();
        let by_source: Vec<(&Source, Vec<&str>)> = if self.partitioned() {
            let mut per: Vec<Vec<&str>> = vec![Vec::new(); self.set.partitions];
            for u in &q.users {
                per[super::partition_of(u, self.set.partitions)].push(u);
            }
            let mut v: Vec<(&Source, Vec<&str>)> = Vec::new();
            if !q.topics.is_empty() {
                v.push((self.bcast(), Vec::new()));
            }
            for (k, list) in per.into_iter().enumerate() {
                if !list.is_empty() {
                    v.push((self.part(k), list));
                }
            }
            v
        } else {
            vec![(self.bcast(), q.users.iter().map(String::as_str).collect())]
        };
        // The scripts go out together: the answer waits for the slowest
        // partition, not for their sum.
        let calls = by_source.iter().map(|(src, us)| {
            let ts: &[String] = if src.index == 0 { &q.topics } else { &[] };
            let mut args = self.args(src, 2 + us.len() + ts.len());
            args.push(Value::from(cutoff as i64));
            args.push(Value::from(us.len() as i64));
            args.extend(us.iter().map(|u| Value::from(*u)));
            args.extend(ts.iter().map(|t| Value::from(t.as_str())));
            self.script(src, "presence", &self.scripts.presence_count, args)
        });
        let replies = futures_util::future::join_all(calls).await;
        for ((src, us), v) in by_source.iter().zip(replies) {
            let ts: &[String] = if src.index == 0 { &q.topics } else { &[] };
            let mut it = v?.into_iter().skip(1);
            let uc = it.next().map(Value::into_array).unwrap_or_default();
            let tc = it.next().map(Value::into_array).unwrap_or_default();
            for (u, n) in us.iter().zip(uc) {
                users.insert(u, n.as_u64().unwrap_or(0));
            }
            for (t, n) in ts.iter().zip(tc) {
                topics.push((t.clone(), n.as_u64().unwrap_or(0)));
            }
        }
        Some(Counts {
            users: q
                .users
                .iter()
                .map(|u| (u.clone(), users.get(u.as_str()).copied().unwrap_or(0)))
                .collect(),
            topics,
        })
    }

    /// Heartbeats older than this (unix ms) are stale.
    fn cutoff(&self) -> u64 {
        clock::unix_ms().saturating_sub(self.set.stale_after.as_millis() as u64)
    }
}
