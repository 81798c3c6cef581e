//! Where a functional cluster test runs its pods: a [`Backend`] is the Redis
//! they share (the shared standalone Redis, or the 3-master Redis Cluster
//! shared by the test binary, [`RedisCluster::shared`]) plus flags every pod
//! gets, and [`Backend::cluster`] gives a test its [`TestCluster`] there, under
//! a key prefix of its own.

use super::redis::{Cluster, Resp, Timing};
use super::redis_cluster::{Pods, RedisCluster};
use super::Herald;

/// The Redis that the pods of a test share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redis {
    /// The shared Redis on 127.0.0.1:6379, or one of the test's own when none
    /// answers there ([`Cluster::shared`]).
    Standalone,
    /// The 3-master Redis Cluster of this test binary
    /// ([`RedisCluster::shared`]), through its `redis-cluster://` URL.
    Cluster,
}

/// A Redis and the flags every pod started on it gets (before the test's own).
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub redis: Redis,
    pub flags: &'static [&'static str],
}

impl Backend {
    /// The shared standalone Redis, no extra flags.
    pub const REDIS: Backend = Backend {
        redis: Redis::Standalone,
        flags: &[],
    };

    /// The test binary's shared Redis Cluster, no extra flags.
    pub const REDIS_CLUSTER: Backend = Backend {
        redis: Redis::Cluster,
        flags: &[],
    };

    /// Whether this backend can run here (see [`super::tools`]): says why
    /// not and returns false, or panics under `HERALD_REQUIRE_TOOLS=1`.
    pub fn available(self, test: &str) -> bool {
        match self.redis {
            Redis::Standalone => super::tools::redis(test),
            Redis::Cluster => super::tools::have(test, &["redis-server", "redis-cli"]),
        }
    }

    /// The same Redis, with `flags` given to every pod.
    pub const fn with_flags(self, flags: &'static [&'static str]) -> Backend {
        Backend { flags, ..self }
    }

    /// The `--partitions` the pods get from the backend's flags (1 without).
    pub fn partitions(self) -> usize {
        let mut n = 1;
        let mut flags = self.flags.iter();
        while let Some(f) = flags.next() {
            let value = match f.strip_prefix("--partitions") {
                Some("") => flags.next().copied(),
                Some(v) => v.strip_prefix('='),
                None => None,
            };
            if let Some(v) = value {
                n = v
                    .parse()
                    .unwrap_or_else(|_| panic!("--partitions {v:?} is not a number"));
            }
        }
        n
    }

    /// Whether the pods' SSE ids are two-part (`b.p`, compared part by part)
    /// rather than one number: with more than one partition. Then the id a
    /// subscriber sees may differ from the publish answer's, and a connection's
    /// user events and its shared (`all`, topic) events each keep their publish
    /// order, but not their order with one another.
    pub fn two_part_ids(self) -> bool {
        self.partitions() > 1
    }

    /// A herald cluster for `test` on this backend: a key prefix unique to the
    /// test, [`Timing::FAST`]. Its keys are deleted when it is dropped (pods must
    /// be dropped first: declare it before its pods).
    pub fn cluster(self, test: &str) -> TestCluster {
        let on = match self.redis {
            Redis::Standalone => On::Redis(Cluster::shared(test)),
            Redis::Cluster => {
                let rc = RedisCluster::shared();
                On::RedisCluster {
                    rc,
                    pods: rc.pods(test),
                }
            }
        };
        TestCluster { backend: self, on }
    }
}

/// A test's herald cluster on a [`Backend`].
pub struct TestCluster {
    backend: Backend,
    on: On,
}

enum On {
    Redis(Cluster),
    RedisCluster {
        rc: &'static RedisCluster,
        pods: Pods,
    },
}

impl TestCluster {
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The `--redis-prefix` of the pods (the hash tag of every key).
    pub fn prefix(&self) -> &str {
        match &self.on {
            On::Redis(cl) => &cl.prefix,
            On::RedisCluster { pods, .. } => &pods.prefix,
        }
    }

    /// The `--redis` URL of the pods.
    pub fn redis_url(&self) -> String {
        match &self.on {
            On::Redis(cl) => cl.redis_url(),
            On::RedisCluster { pods, .. } => pods.url.clone(),
        }
    }

    pub fn with_timing(mut self, timing: Timing) -> TestCluster {
        match &mut self.on {
            On::Redis(cl) => cl.timing = timing,
            On::RedisCluster { pods, .. } => pods.timing = timing,
        }
        self
    }

    /// Start a pod: the backend's Redis, the prefix, `--shards 2`, the timings, a
    /// pod id unique to the test, the backend's flags, then `extra`.
    pub fn pod(&self, extra: &[&str]) -> Herald {
        let mut args = self.backend.flags.to_vec();
        args.extend_from_slice(extra);
        match &self.on {
            On::Redis(cl) => cl.pod(&args),
            On::RedisCluster { pods, .. } => pods.pod(&args),
        }
    }

    /// A RESP client to the Redis that holds `key`: on a Redis Cluster, the
    /// master serving its slot (any other answers `MOVED`).
    pub fn client_for_key(&self, key: &str) -> Resp {
        match &self.on {
            On::Redis(cl) => cl.client(),
            On::RedisCluster { rc, .. } => rc.client(rc.node_for_key(key)),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // A standalone `Cluster` deletes its keys itself.
        if let On::RedisCluster { rc, pods } = &self.on {
            let _ = rc.delete_keys_containing(&pods.prefix);
        }
    }
}
