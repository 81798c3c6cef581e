//! This pod's `Idempotency-Key` records: the answer a publish got, kept for
//! `--idempotency-window`, so that a repeat gets the same status and body and
//! publishes nothing; and the keys whose publish is still in flight, whose
//! repeats wait for its outcome.
//!
//! In a cluster this is the pod's own front: a repeat that reaches another pod
//! is caught by the Redis script that appends the publish
//! ([`crate::cluster`]), which keeps the same records under the cluster's tags.
//!
//! Only answers that took the events (`202`, sent or buffered) are recorded: a
//! refusal (`503`, a full buffer) leaves the key free, so the publisher's retry
//! publishes. Memory is bounded by the window and, whatever the publish rate, by
//! [`MAX_BYTES`] (the oldest records go first past it, counted).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::clock;
use crate::metrics as m;

/// Bytes of records (keys and bodies) one pod keeps at most.
pub const MAX_BYTES: usize = 64 << 20;

/// What a repeat gets: the first publish's body (only `202` answers are kept,
/// so that is its status too).
pub type Answer = Bytes;

enum Entry {
    /// The first publish with this key is in flight; its outcome is sent here
    /// (`None` until then; the sender dropped: it gave up, the key is free).
    InFlight(watch::Sender<Option<Arc<Answer>>>),
    Done {
        answer: Arc<Answer>,
        expires: u64,
    },
}

#[derive(Default)]
struct Inner {
    map: HashMap<Box<str>, Entry>,
    /// Done records by expiry (the window is one for all: insertion order).
    order: VecDeque<(u64, Box<str>)>,
    bytes: usize,
}

impl Inner {
    fn record_bytes(key: &str, a: &Answer) -> usize {
        key.len() * 2 + a.len() + 96
    }

    /// Drop what expired, and the oldest records past `max_bytes`.
    fn expire(&mut self, now: u64, max_bytes: usize) {
        while let Some((expires, _)) = self.order.front() {
            let over = self.bytes > max_bytes;
            if *expires > now && !over {
                break;
            }
            let (expires, key) = self.order.pop_front().expect("front exists");
            if let Some(Entry::Done { answer, expires: e }) = self.map.get(&key) {
                if *e == expires {
                    self.bytes -= Self::record_bytes(&key, answer);
                    self.map.remove(&key);
                    if over && expires > now {
                        m::idempotency_evicted();
                    }
                }
            }
        }
        m::set_idempotency(self.order.len(), self.bytes);
    }
}

/// A claim on a key.
pub enum Claim<'a> {
    /// The first with this key: publish, then [`Ticket::complete`] (or drop the
    /// ticket to give the key up).
    First(Ticket<'a>),
    /// A repeat: the first one's answer.
    Replay(Arc<Answer>),
    /// The first one is still in flight after the wait bound.
    Busy,
}

/// See the module doc.
pub struct Store {
    inner: Mutex<Inner>,
    window_ns: u64,
    max_bytes: usize,
    /// How long a repeat waits for the first one's outcome.
    wait: Duration,
}

impl Store {
    pub fn new(window: Duration, wait: Duration) -> Store {
        Store::with_limit(window, wait, MAX_BYTES)
    }

    pub fn with_limit(window: Duration, wait: Duration, max_bytes: usize) -> Store {
        Store {
            inner: Mutex::new(Inner::default()),
            window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
            max_bytes,
            wait,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claim `key`: the first claim publishes; a repeat within the window gets the
    /// first one's answer, waiting (bounded) while the first is in flight.
    pub async fn claim(&self, key: &str) -> Claim<'_> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let mut rx = {
                let mut inner = self.lock();
                inner.expire(clock::now_ns(), self.max_bytes);
                match inner.map.get(key) {
                    None => {
                        let (tx, _) = watch::channel(None);
                        inner.map.insert(key.into(), Entry::InFlight(tx));
                        return Claim::First(Ticket {
                            store: self,
                            key: key.into(),
                            done: false,
                        });
                    }
                    Some(Entry::Done { answer, .. }) => return Claim::Replay(answer.clone()),
                    Some(Entry::InFlight(tx)) => tx.subscribe(),
                }
            };
            let outcome = tokio::time::timeout_at(deadline, rx.wait_for(|a| a.is_some())).await;
            match outcome {
                Ok(Ok(answer)) => {
                    return Claim::Replay(answer.clone().expect("waited for an answer"))
                }
                // The first gave the key up: claim it again.
                Ok(Err(_)) => continue,
                Err(_) => return Claim::Busy,
            }
        }
    }

    /// Records held now (for tests).
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The first claim on a key; see [`Claim::First`].
pub struct Ticket<'a> {
    store: &'a Store,
    key: Box<str>,
    done: bool,
}

impl Ticket<'_> {
    /// Record the answer (and hand it to the repeats waiting for it).
    pub fn complete(mut self, answer: Answer) {
        self.done = true;
        let answer = Arc::new(answer);
        let now = clock::now_ns();
        let mut inner = self.store.lock();
        let key = std::mem::take(&mut self.key);
        let waiting = if self.store.window_ns == 0 {
            inner.map.remove(&key)
        } else {
            let expires = now.saturating_add(self.store.window_ns);
            inner.bytes += Inner::record_bytes(&key, &answer);
            inner.order.push_back((expires, key.clone()));
            inner.map.insert(
                key,
                Entry::Done {
                    answer: answer.clone(),
                    expires,
                },
            )
        };
        if let Some(Entry::InFlight(tx)) = waiting {
            tx.send_replace(Some(answer));
        }
        inner.expire(now, self.store.max_bytes);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Given up (refused, or the request went away): the key is free, and
            // the repeats waiting on it claim it again.
            let mut inner = self.store.lock();
            if matches!(inner.map.get(&self.key), Some(Entry::InFlight(_))) {
                inner.map.remove(&self.key);
            }
        }
    }
}

/// The `Idempotency-Key` of a request whose values of that header are
/// `values`: none, one valid key, or a `400`.
pub fn key_of<'a>(
    mut values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<Box<str>>, crate::error::ApiError> {
    use crate::error::ApiError;
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "send one Idempotency-Key header, not several",
        ));
    }
    match std::str::from_utf8(v) {
        Ok(k) if valid_key(v) => Ok(Some(k.into())),
        _ => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-128 bytes of letters, digits and . _ : @ -",
        )),
    }
}

/// Whether `key` is a valid `Idempotency-Key`: 1–128 bytes of the name
/// alphabet (letters, digits and `. _ : @ -`).
pub fn valid_key(key: &[u8]) -> bool {
    std::str::from_utf8(key).is_ok_and(crate::http::params::valid_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(s: &str) -> Answer {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_repeat_gets_the_first_answer() {
        rt().block_on(async {
            let s = Store::new(Duration::from_secs(60), Duration::from_secs(1));
            let Claim::First(t) = s.claim("k").await else {
                panic!("first")
            };
            t.complete(answer("one"));
            match s.claim("k").await {
                Claim::Replay(a) => assert_eq!(*a, "one"),
                _ => panic!("replay expected"),
            }
            assert_eq!(s.len(), 1);
        });
    }

    #[test]
    fn a_repeat_in_flight_waits_and_a_given_up_key_is_free() {
        rt().block_on(async {
            let s = Store::new(Duration::from_secs(60), Duration::from_secs(5));
            let Claim::First(t) = s.claim("k").await else {
                panic!("first")
            };
            let (first, second) = tokio::join!(
                async {
                    tokio::task::yield_now().await;
                    t.complete(answer("one"));
                },
                s.claim("k")
            );
            let () = first;
            assert!(matches!(second, Claim::Replay(a) if *a == "one"));

            let Claim::First(t) = s.claim("g").await else {
                panic!("first")
            };
            let (_, again) = tokio::join!(
                async {
                    tokio::task::yield_now().await;
                    drop(t);
                },
                s.claim("g")
            );
            assert!(matches!(again, Claim::First(_)));
        });
    }

    #[test]
    fn records_expire_and_bytes_are_bounded() {
        rt().block_on(async {
            let s = Store::new(Duration::from_millis(1), Duration::from_secs(1));
            let Claim::First(t) = s.claim("k").await else {
                panic!()
            };
            t.complete(answer("one"));
            std::thread::sleep(Duration::from_millis(5));
            assert!(matches!(s.claim("k").await, Claim::First(_)));

            let s = Store::with_limit(Duration::from_secs(60), Duration::from_secs(1), 2000);
            for i in 0..100 {
                let Claim::First(t) = s.claim(&format!("k{i}")).await else {
                    panic!()
                };
                t.complete(answer(&"x".repeat(100)));
            }
            assert!(s.len() < 20, "{}", s.len());
            assert!(matches!(s.claim("k99").await, Claim::Replay(_)));
            assert!(matches!(s.claim("k0").await, Claim::First(_)));
        });
    }

    #[test]
    fn keys_use_the_name_alphabet() {
        assert!(valid_key(b"order-42:retry_1@a.b"));
        assert!(!valid_key(b""));
        assert!(!valid_key(&[b'a'; 129]));
        assert!(valid_key(&[b'a'; 128]));
        assert!(!valid_key(b"has space"));
        assert!(!valid_key(b"caf\xc3\xa9"));
        assert!(!valid_key(b"\xff"));
    }
}
