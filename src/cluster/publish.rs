//! Publishing into the cluster. A publish request (one event or a batch) is a
//! job in this pod's publish queue; a task on the Redis thread sends the queue
//! in rounds: one publish script call per source (the broadcasts' tag, each
//! partition's) carrying every job waiting for it, in queue order. Publishes
//! arriving together therefore share one call, and a batch is one call per
//! source it touches.
//!
//! Each job has a sequence number of this pod's, and its client's
//! `Idempotency-Key` if any; the script records both with the outcome (see
//! [`super::scripts`]). A call that fails or times out leaves its jobs at the
//! head of the queue, answered "buffered", and they are sent again when Redis
//! answers, marked "may have been applied": Redis recognises the ones it did
//! apply (a stalled Redis runs the first call late) and answers with their
//! first outcome instead of appending them again. While Redis does not answer,
//! new publishes are buffered behind them, up to `--publish-buffer` events.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use fred::types::Value;
use tokio::sync::oneshot;

use super::{log, partition_of, Cluster};
use crate::clock;
use crate::event::Target;
use crate::metrics as m;
use crate::seam::{PublishRequest, Published};

/// Events one round sends at most (more wait for the next round)...
const ROUND_EVENTS: usize = 1000;
/// ...and bytes of event data.
const ROUND_BYTES: usize = 1 << 20;

/// A job's events for one source.
struct Part {
    /// Index into the cluster's sources.
    source: usize,
    /// The job's events sent there, in order: their index in the job, and the
    /// target when it differs from the event's own (a partition's share of a
    /// user list).
    events: Vec<(u32, Option<Target>)>,
    /// Sent before without an answer: Redis may have applied it.
    check: bool,
    /// The log ids Redis gave (or had given) these events, once known.
    ids: Option<Vec<u64>>,
}

/// One publish request on its way to Redis.
struct Job {
    seq: u64,
    key: Option<Box<str>>,
    items: Vec<PublishRequest>,
    /// When it was published (unix ns), for the latency figures.
    ns: u64,
    parts: Vec<Part>,
    /// Answered "buffered" (the records keep that answer).
    buffered: bool,
    /// A part was answered under the key from an earlier request.
    replayed: bool,
    /// A part's stored answer was "buffered" (with `replayed`).
    replayed_buffered: bool,
    reply: Option<oneshot::Sender<Published>>,
}

impl Job {
    fn bytes(&self) -> usize {
        self.items.iter().map(|p| p.data.len() + 64).sum()
    }

    fn done(&self) -> bool {
        self.parts.iter().all(|p| p.ids.is_some())
    }

    /// The outcome, once every part is done: each event's id is the one of the
    /// first source it went to.
    fn outcome(&self) -> Published {
        if self.replayed && self.replayed_buffered {
            return Published::Buffered { replayed: true };
        }
        let mut ids: Vec<Option<u64>> = vec![None; self.items.len()];
        for part in &self.parts {
            let Some(got) = &part.ids else { continue };
            for (&(i, _), &id) in part.events.iter().zip(got) {
                ids[i as usize].get_or_insert(id);
            }
        }
        Published::Ids {
            ids: ids.into_iter().map(|id| id.unwrap_or(0)).collect(),
            replayed: self.replayed,
        }
    }

    fn answer(&mut self, p: Published) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(p);
        }
    }
}

/// This pod's publish queue.
pub(super) struct Queue {
    jobs: VecDeque<Job>,
    /// Events held (in `jobs` and in the round being sent).
    events: usize,
    /// Events held after a "buffered" answer.
    buffered_events: usize,
    /// The last round failed: publishes are answered "buffered" at once.
    failing: bool,
    next_seq: u64,
}

impl Queue {
    pub(super) fn new() -> Queue {
        Queue {
            jobs: VecDeque::new(),
            events: 0,
            buffered_events: 0,
            failing: false,
            // Above every sequence an earlier process with the same pod id used,
            // so that none of its records is taken for one of ours.
            next_seq: clock::unix_us(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.events == 0
    }

    fn buffer(&mut self, job: &mut Job) {
        if !job.buffered {
            job.buffered = true;
            let n = job.items.len();
            self.buffered_events += n;
            m::publish_buffered_total(n as u64);
        }
        job.answer(Published::Buffered { replayed: false });
    }
}

impl Cluster {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.publishes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether no publish waits to be sent.
    pub(super) fn queue_is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    /// Publish a request's events (see the module doc): their ids once Redis
    /// took them, "buffered" while it does not answer, or `Full`.
    pub async fn publish(&self, items: Vec<PublishRequest>, key: Option<&str>) -> Published {
        let n = items.len();
        let parts = self.parts_of(&items);
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.queue();
            let holding = q.failing || !self.is_up();
            if holding && q.events + n > self.set.publish_buffer {
                m::publish_buffer_full();
                return Published::Full;
            }
            let seq = q.next_seq;
            q.next_seq += 1;
            let mut job = Job {
                seq,
                key: key.map(Into::into),
                items,
                ns: clock::unix_us().saturating_mul(1000),
                parts,
                buffered: false,
                replayed: false,
                replayed_buffered: false,
                reply: Some(tx),
            };
            if holding {
                q.buffer(&mut job);
            }
            q.events += n;
            m::publish_buffered(q.buffered_events);
            q.jobs.push_back(job);
        }
        self.publish_wake.notify_one();
        // Bounded: a round answers within the command timeout.
        match tokio::time::timeout(self.set.timeout * 2 + Duration::from_secs(1), rx).await {
            Ok(Ok(p)) => p,
            _ => Published::Buffered { replayed: false },
        }
    }

    /// Split a request's events by source: the broadcasts' tag for `all` and
    /// topics (and everything without partitions); each user's partition.
    fn parts_of(&self, items: &[PublishRequest]) -> Vec<Part> {
        let mut parts: Vec<Part> = Vec::with_capacity(1);
        let mut add = |source: usize, i: usize, t: Option<Target>| {
            let at = match parts.iter().position(|p| p.source == source) {
                Some(at) => at,
                None => {
                    parts.push(Part {
                        source,
                        events: Vec::new(),
                        check: false,
                        ids: None,
                    });
                    parts.len() - 1
                }
            };
            parts[at].events.push((i as u32, t));
        };
        for (i, p) in items.iter().enumerate() {
            match &p.target {
                Target::Users(users) if self.partitioned() => {
                    let n = self.set.partitions;
                    for k in 0..n {
                        let mine: Box<[Box<str>]> = users
                            .iter()
                            .filter(|u| partition_of(u, n) == k)
                            .cloned()
                            .collect();
                        if !mine.is_empty() {
                            add(k + 1, i, Some(Target::Users(mine)));
                        }
                    }
                }
                _ => add(0, i, None),
            }
        }
        parts.sort_by_key(|p| p.source);
        parts
    }

    /// Send one round: the jobs at the head of the queue, one script call per
    /// source. Returns whether every call was answered.
    async fn publish_round(&self) -> bool {
        let (mut round, low) = {
            let mut q = self.queue();
            let Some(low) = q.jobs.front().map(|j| j.seq) else {
                return true;
            };
            let (mut events, mut bytes) = (0, 0);
            let mut round = Vec::new();
            while let Some(j) = q.jobs.front() {
                if !round.is_empty()
                    && (events + j.items.len() > ROUND_EVENTS || bytes + j.bytes() > ROUND_BYTES)
                {
                    break;
                }
                events += j.items.len();
                bytes += j.bytes();
                round.push(q.jobs.pop_front().expect("front exists"));
            }
            (round, low)
        };
        let mut calls = Vec::new();
        for (s, src) in self.sources.iter().enumerate() {
            let mut args = self.args(src, 16);
            let mut njobs = 0;
            let mut members = Vec::new();
            args.extend([
                Value::from(self.set.max_pending as i64),
                Value::from(self.set.history_events.max(1) as i64),
                Value::from(clock::unix_ms() as i64),
                self.pod_value(),
                Value::from(trim_to(src, low)),
                Value::from(
                    self.set
                        .idempotency_window
                        .as_millis()
                        .min(i64::MAX as u128) as i64,
                ),
                Value::Null, // the number of jobs, below
            ]);
            for (j, job) in round.iter().enumerate() {
                let Some((pi, part)) = job
                    .parts
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.source == s && p.ids.is_none())
                else {
                    continue;
                };
                njobs += 1;
                members.push((j, pi));
                args.extend([
                    Value::from(job.seq.to_string()),
                    Value::from(if part.check { "1" } else { "0" }),
                    Value::from(job.key.as_deref().unwrap_or("")),
                    Value::from(if job.buffered { "B" } else { "N" }),
                    Value::from(job.ns.to_string()),
                    Value::from(part.events.len() as i64),
                ]);
                for (i, target) in &part.events {
                    let p = &job.items[*i as usize];
                    let (kind, names) = log::encode_target(target.as_ref().unwrap_or(&p.target));
                    args.extend([
                        Value::from(p.event.as_str()),
                        Value::from(p.data.as_str()),
                        Value::from(kind),
                        Value::from(names),
                        Value::from(p.ttl_seconds.saturating_mul(1000).min(i64::MAX as u64) as i64),
                    ]);
                }
            }
            if njobs == 0 {
                continue;
            }
            args[8] = Value::from(njobs as i64);
            calls.push((
                members,
                self.script(src, "publish", &self.scripts.publish, args),
            ));
        }
        let (members, futures): (Vec<_>, Vec<_>) = calls.into_iter().unzip();
        let results = futures_util::future::join_all(futures).await;
        let mut all_ok = true;
        for (members, result) in members.into_iter().zip(results) {
            let Some(v) = result else {
                all_ok = false;
                for (j, pi) in members {
                    round[j].parts[pi].check = true;
                }
                continue;
            };
            let n = |i: usize| v.get(i).and_then(|x| x.as_u64()).unwrap_or(0);
            m::dropped("pending_overflow", n(1));
            let outs = v.iter().skip(2);
            for ((j, pi), out) in members.into_iter().zip(outs) {
                let rec = out.as_str().unwrap_or_default();
                let job = &mut round[j];
                let (how, rest) = rec.split_at(rec.len().min(1));
                let (flag, ids) = rest.split_at(rest.len().min(1));
                match how {
                    "R" => {
                        job.replayed = true;
                        job.replayed_buffered |= flag == "B";
                    }
                    "S" => m::publish_retry_recognised(1),
                    _ => {}
                }
                let ids: Vec<u64> = ids.split(',').filter_map(log::sse_id).collect();
                job.parts[pi].ids = Some(ids);
            }
        }
        let mut q = self.queue();
        q.failing = !all_ok;
        for mut job in round.into_iter().rev() {
            if job.done() {
                q.events -= job.items.len();
                if job.buffered {
                    q.buffered_events -= job.items.len();
                }
                let outcome = job.outcome();
                job.answer(outcome);
            } else {
                q.buffer(&mut job);
                q.jobs.push_front(job);
            }
        }
        m::publish_buffered(q.buffered_events);
        all_ok
    }
}

/// Records of applied publishes are trimmed once the lowest unsettled sequence
/// moved this far (not on every call: the trim and the key's expiry are two
/// commands, a single event's call is five).
const TRIM_EVERY: u64 = 64;

/// The trim bound to send to `src` with a call whose lowest unsettled sequence
/// is `low` (`"0"`: no trim this time).
fn trim_to(src: &super::Source, low: u64) -> String {
    use std::sync::atomic::Ordering;
    let last = src.trimmed_to.load(Ordering::Relaxed);
    if low >= last + TRIM_EVERY {
        src.trimmed_to.store(low, Ordering::Relaxed);
        low.to_string()
    } else {
        "0".to_string()
    }
}

/// Send the publish queue in rounds; after a failed round, again every 250 ms
/// or as soon as Redis is seen answering.
pub(super) async fn publish_loop(c: Arc<Cluster>) {
    loop {
        if c.queue().jobs.is_empty() {
            c.publish_wake.notified().await;
            continue;
        }
        if !c.publish_round().await {
            let _ =
                tokio::time::timeout(Duration::from_millis(250), c.publish_wake.notified()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(items: usize, parts: Vec<Part>) -> Job {
        Job {
            seq: 1,
            key: None,
            items: (0..items)
                .map(|_| PublishRequest {
                    event: "message".into(),
                    data: "x".into(),
                    target: Target::All,
                    ttl_seconds: 0,
                })
                .collect(),
            ns: 0,
            parts,
            buffered: false,
            replayed: false,
            replayed_buffered: false,
            reply: None,
        }
    }

    fn part(source: usize, events: &[u32], ids: Option<Vec<u64>>) -> Part {
        Part {
            source,
            events: events.iter().map(|&i| (i, None)).collect(),
            check: false,
            ids,
        }
    }

    #[test]
    fn an_event_takes_the_id_of_the_first_source_it_went_to() {
        let j = job(
            3,
            vec![
                part(0, &[0, 2], Some(vec![10, 30])),
                part(1, &[1, 2], Some(vec![21, 31])),
            ],
        );
        assert!(j.done());
        assert_eq!(
            j.outcome(),
            Published::Ids {
                ids: vec![10, 21, 30],
                replayed: false
            }
        );
        let j = job(1, vec![part(0, &[0], Some(vec![1])), part(1, &[0], None)]);
        assert!(!j.done());
    }

    #[test]
    fn a_repeat_of_a_buffered_answer_is_buffered() {
        let mut j = job(1, vec![part(0, &[0], Some(vec![1]))]);
        j.replayed = true;
        j.replayed_buffered = true;
        assert_eq!(j.outcome(), Published::Buffered { replayed: true });
    }
}
