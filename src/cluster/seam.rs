//! Cluster mode behind the seam: [`Cluster`] is the Redis [`ConnectionRegistry`]
//! and [`EventBus`].

use std::time::Duration;

use super::connect::Trouble;
use super::Cluster;
use crate::broker::{Broker, Joined};
use crate::seam::{
    ClusterStats, ConnectionRegistry, Elsewhere, EventBus, Health, Pending, PublishRequest,
    Published, Registration,
};

impl ConnectionRegistry for Cluster {
    fn is_shared(&self) -> bool {
        true
    }

    fn partition_of(&self, user: &str) -> u8 {
        self.partition_index(user)
    }

    fn register<'a>(&'a self, r: Registration<'a>) -> Pending<'a, Option<Joined>> {
        Box::pin(Cluster::register(self, r))
    }

    fn abandon(&self, user: &str, conn_id: &str, serial: u64, topics: &[Box<str>]) {
        self.forget(user, conn_id, serial, topics);
    }

    fn ended(&self, user: &str, conn_id: Option<&str>, serial: u64, topics: &[&str]) {
        Cluster::ended(self, user, conn_id, serial, topics);
    }

    fn unregister(&self, user: &str, conn_id: &str, serial: u64) {
        Cluster::unregister(self, user, conn_id, serial);
    }

    fn block_everywhere<'a>(&'a self, user: &'a str, until_ms: u64) -> Pending<'a, bool> {
        Box::pin(self.block(user, until_ms))
    }

    fn disconnect_elsewhere<'a>(
        &'a self,
        user: &'a str,
        conn_id: &'a str,
    ) -> Pending<'a, Elsewhere> {
        Box::pin(async move {
            match self.disconnect(user, conn_id).await {
                Ok(true) => Elsewhere::Ended,
                Ok(false) => Elsewhere::NotFound,
                Err(()) => Elsewhere::Unreachable,
            }
        })
    }

    fn stats(&self) -> Pending<'_, Option<ClusterStats>> {
        Box::pin(Cluster::stats(self))
    }

    fn connections_of<'a>(
        &'a self,
        user: &'a str,
    ) -> Pending<'a, Option<Vec<crate::presence::ConnInfo>>> {
        Box::pin(Cluster::connections_of(self, user))
    }

    fn presence<'a>(
        &'a self,
        q: &'a crate::presence::Query,
    ) -> Pending<'a, Option<crate::presence::Counts>> {
        Box::pin(Cluster::presence(self, q))
    }

    fn heartbeat(&self, broker: &Broker, shard: u16) {
        Cluster::heartbeat(self, broker, shard);
    }

    fn health(&self) -> Health {
        let (trouble, denied) = self.trouble();
        let unsent = self.probe_unsent();
        if trouble != Trouble::None || unsent || !denied.is_empty() {
            let problem = match &trouble {
                Trouble::None if !denied.is_empty() => "permission",
                // Commands answer, but a probe could not be sent: one of
                // the masters is missing (a failover under way).
                Trouble::None => "partial",
                t => t.label(),
            };
            let detail = match trouble {
                Trouble::None if unsent => {
                    "a Redis node holding this pod's keys does not answer".into()
                }
                Trouble::None => String::new(),
                Trouble::Unreachable(d)
                | Trouble::Auth(d)
                | Trouble::Tls(d)
                | Trouble::Sentinel(d) => d,
            };
            Health::Degraded {
                problem,
                detail,
                denied,
            }
        } else if !self.is_delivering() {
            Health::Stalled
        } else {
            Health::Ok
        }
    }

    fn drain(&self, within: Duration) {
        Cluster::drain(self, within);
    }

    fn leave(&self, within: Duration) {
        Cluster::leave(self, within);
    }
}

impl EventBus for Cluster {
    fn publish<'a>(
        &'a self,
        _: &'a Broker,
        batch: Vec<PublishRequest>,
        key: Option<&'a str>,
    ) -> Pending<'a, Published> {
        Box::pin(Cluster::publish(self, batch, key))
    }
}
