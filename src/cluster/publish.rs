//! Publishing into the cluster: one script appends the event to the log and
//! routes it (see [`super`]); while Redis is unreachable publishes wait in a
//! bounded buffer and are sent in order when it returns.

use std::sync::Arc;
use std::time::Duration;

use fred::types::Value;

use super::{log, partition_of, Cluster, Source};
use crate::clock;
use crate::event::Target;
use crate::metrics as m;
use crate::seam::{PublishRequest, Published};

impl Cluster {
    /// Publish into the cluster's log, or buffer while Redis is unreachable.
    pub async fn publish(&self, p: PublishRequest) -> Published {
        let empty = self
            .buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if self.is_up() && empty {
            if let Some(id) = self.send_publish(&p).await {
                return Published::Id(id);
            }
        }
        let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() >= self.set.publish_buffer {
            m::publish_buffer_full();
            return Published::Full;
        }
        buf.push_back(p);
        m::publish_buffered_one();
        m::publish_buffered(buf.len());
        drop(buf);
        self.buffered.notify_one();
        Published::Buffered
    }

    /// Publish a batch in its order. While Redis is unreachable (or publishes
    /// already wait) the whole batch is buffered, or refused whole when the buffer
    /// cannot take it; when a send fails midway, the rest is buffered behind it.
    pub async fn publish_batch(&self, batch: Vec<PublishRequest>) -> Vec<Published> {
        let n = batch.len();
        let mut out = Vec::with_capacity(n);
        let mut rest = batch.into_iter();
        let buffering = !self.is_up()
            || !self
                .buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        if !buffering {
            for p in rest.by_ref() {
                match self.send_publish(&p).await {
                    Some(id) => out.push(Published::Id(id)),
                    None => {
                        out.extend(self.buffer_all(std::iter::once(p).chain(rest.by_ref())));
                        return out;
                    }
                }
            }
            return out;
        }
        out.extend(self.buffer_all(rest));
        out
    }

    /// Buffer these publishes together, or none of them when they do not fit.
    fn buffer_all(&self, items: impl Iterator<Item = PublishRequest>) -> Vec<Published> {
        let items: Vec<PublishRequest> = items.collect();
        let mut buf = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() + items.len() > self.set.publish_buffer {
            m::publish_buffer_full();
            return items.iter().map(|_| Published::Full).collect();
        }
        let n = items.len();
        buf.extend(items);
        for _ in 0..n {
            m::publish_buffered_one();
        }
        m::publish_buffered(buf.len());
        drop(buf);
        self.buffered.notify_one();
        vec![Published::Buffered; n]
    }

    /// One publish script call per source the event goes to: the broadcasts'
    /// tag for `all` and topics; for users, the partition of each (one call per
    /// partition, each with its own users). Returns the first call's log id.
    async fn send_publish(&self, p: &PublishRequest) -> Option<u64> {
        let Target::Users(users) = &p.target else {
            return self.publish_on(self.bcast(), p, &p.target).await;
        };
        if !self.partitioned() {
            return self.publish_on(self.bcast(), p, &p.target).await;
        }
        let mut first = None;
        for k in 0..self.set.partitions {
            let mine: Box<[Box<str>]> = users
                .iter()
                .filter(|u| partition_of(u, self.set.partitions) == k)
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            let id = self
                .publish_on(self.part(k), p, &Target::Users(mine))
                .await?;
            first.get_or_insert(id);
        }
        first
    }

    async fn publish_on(&self, src: &Source, p: &PublishRequest, target: &Target) -> Option<u64> {
        let (kind, names) = log::encode_target(target);
        let now = clock::unix_ms();
        let mut args = self.args(src, 9);
        args.extend([
            Value::from(p.event.as_str()),
            Value::from(p.data.as_str()),
            Value::from(kind),
            Value::from(names),
            Value::from(p.ttl_seconds.saturating_mul(1000).min(i64::MAX as u64) as i64),
            Value::from(self.set.max_pending as i64),
            Value::from(self.set.history_events.max(1) as i64),
            Value::from(now as i64),
            Value::from((clock::unix_us().saturating_mul(1000)).to_string()),
        ]);
        let v = self
            .script(src, "publish", &self.scripts.publish, args)
            .await?;
        let id = v
            .first()
            .and_then(|x| x.as_str())
            .and_then(|s| log::sse_id(&s))?;
        let n = |i: usize| v.get(i).and_then(|x| x.as_u64()).unwrap_or(0);
        m::dropped("pending_overflow", n(2));
        Some(id)
    }
}

/// Send buffered publishes, in order, whenever Redis is reachable.
pub(super) async fn flush_loop(c: Arc<Cluster>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(250), c.buffered.notified()).await;
        loop {
            let front = c
                .buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .front()
                .cloned();
            let Some(p) = front else { break };
            if c.send_publish(&p).await.is_none() {
                break;
            }
            let mut buf = c.buffer.lock().unwrap_or_else(|e| e.into_inner());
            buf.pop_front();
            m::publish_buffered(buf.len());
        }
    }
}
