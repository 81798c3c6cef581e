//! Property tests of herald's TLS record reader, in memory: random sequences
//! of records a client may send (data with and without padding, empty
//! records, key updates, alerts, other handshake messages), sealed with fixed
//! keys for each kind of record layer (TLS 1.3 with its three AEADs, TLS 1.2
//! with two), read in random pieces as an HTTP/2 connection reads them and as
//! a lean stream does; then the same bytes changed (a flipped, inserted or
//! dropped byte, a cut), and bytes of no record at all. The checks live in
//! `herald::tls::testing`, which the fuzz target `tls_records` shares.

use herald::tls::testing::{check_changed, model, open_all, read_lean, seal, Op, Outcome};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec(any::<u8>(), 1..2000), 0usize..64)
            .prop_map(|(d, pad)| Op::Data(d, pad)),
        1 => (prop::collection::vec(any::<u8>(), 16_000..16_385), 0usize..8)
            .prop_map(|(d, pad)| Op::Data(d, pad)),
        2 => (0usize..200).prop_map(|pad| Op::Data(Vec::new(), pad)),
        2 => any::<bool>().prop_map(Op::KeyUpdate),
        1 => (1u8..3, any::<u8>()).prop_map(|(l, d)| Op::Alert(l, d)),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Op::Handshake),
    ]
}

/// A run of records without application data (empty ones, key updates),
/// around the 32 herald takes in a row.
fn idle_run() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            (0usize..4).prop_map(|pad| Op::Data(Vec::new(), pad)),
            any::<bool>().prop_map(Op::KeyUpdate),
        ],
        28..40,
    )
}

/// Sequences mostly without an end, so that most get read through;
/// sometimes with a long run of records without data in the middle.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    (
        prop::collection::vec(op(), 0..24),
        prop::option::weighted(0.25, idle_run()),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut v, run, at)| {
            if let Some(run) = run {
                let i = at.index(v.len() + 1);
                v.splice(i..i, run);
            }
            v
        })
        .prop_map(|mut v| {
            // An alert or a refused message ends what is read: keep at most one,
            // last, in most cases.
            if let Some(at) = v
                .iter()
                .position(|o| matches!(o, Op::Alert(..) | Op::Handshake(_)))
            {
                v.truncate(at + 1);
            }
            v
        })
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..8, 1usize..600, 4000usize..20_000], 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_reader_opens_what_a_client_sends_in_any_pieces(
        which in 0u8..5, ops in ops(), chunks in chunks()
    ) {
        let wire = seal(which, &ops);
        let want = model(which, &ops);
        prop_assert_eq!(open_all(which, &wire, &chunks), want);
    }

    #[test]
    fn a_changed_byte_never_yields_other_plaintext(
        which in 0u8..5,
        ops in ops(),
        chunks in chunks(),
        at in any::<prop::sample::Index>(),
        how in 0u8..4,
        byte in any::<u8>(),
    ) {
        let mut wire = seal(which, &ops);
        prop_assume!(!wire.is_empty());
        let i = at.index(wire.len());
        match how {
            0 => wire[i] ^= byte | 1,
            1 => wire.insert(i, byte),
            2 => {
                wire.remove(i);
            }
            _ => wire.truncate(i),
        }
        let got = open_all(which, &wire, &chunks);
        if let Err(e) = check_changed(&model(which, &ops), &got) {
            return Err(TestCaseError::fail(e));
        }
    }

    #[test]
    fn bytes_that_are_no_records_are_refused_not_panicked_on(
        which in 0u8..5,
        bytes in prop::collection::vec(any::<u8>(), 0..40_000),
        header in any::<bool>(),
        chunks in chunks(),
    ) {
        // Half of them open with a plausible header, so that the reader gets
        // as far as the AEAD.
        let mut wire = bytes;
        if header && wire.len() > 5 {
            let len = ((wire.len() - 5).min(16_640) as u16).to_be_bytes();
            wire[..5].copy_from_slice(&[0x17, 3, 3, len[0], len[1]]);
        }
        let got = open_all(which, &wire, &chunks);
        // Nothing but a refusal comes of bytes no client sealed.
        prop_assert!(
            got.iter().all(|o| matches!(o, Outcome::Refused(_))),
            "{:?}",
            got
        );
    }

    #[test]
    fn a_lean_stream_reads_its_client_in_any_readiness_events(
        which in 0u8..5, ops in ops(), events in chunks()
    ) {
        let wire = seal(which, &ops);
        let want = model(which, &ops);
        let (got, reply_due) = read_lean(which, &wire, &events);
        let ends = want
            .iter()
            .any(|o| matches!(o, Outcome::Alert(_) | Outcome::Refused(_)));
        let ended: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|(_, r)| r.end)
            .map(|(i, _)| i)
            .collect();
        if ends {
            // The stream ends, in the event that brought its last record.
            prop_assert_eq!(ended, vec![got.len() - 1]);
        } else {
            prop_assert!(ended.is_empty(), "ended in event {:?}", ended);
        }
        // A KeyUpdate asking for one back makes herald's own due (and the
        // stream flushed), unless the stream ended first.
        let asked = want.contains(&Outcome::KeyUpdate(true));
        if !ends {
            prop_assert_eq!(reply_due, asked);
            prop_assert_eq!(got.iter().any(|r| r.reply), asked);
        }
        // A record left incomplete by an event is listed for its deadline
        // once, until it completes.
        let listed = got.iter().filter(|r| r.list.is_some()).count();
        prop_assert!(listed <= got.len());
    }
}
