//! Fuzzing what the control plane reads from peers and from its own files: Raft transport
//! frames (length-prefixed, refused above the limit before any allocation), proposals and
//! membership contexts decoded from log entries, and state snapshots. Arbitrary bytes and
//! real encodings with a few bytes changed must decode or be refused, never panic.
//! `PROPTEST_CASES=1000000 cargo test -p arbor-scheduler --test fuzz --release` for a long run.

use arbor_scheduler::Command;
use arbor_scheduler::machine::{ConfContext, Proposal, RequestId, StateMachine};
use arbor_scheduler::transport::read_message;
use proptest::prelude::*;

fn seeds() -> Vec<Vec<u8>> {
    let proposal = Proposal {
        id: RequestId::now(3, 42),
        command: Command::KvPut {
            key: "k".into(),
            value: "v".into(),
        },
    };
    vec![
        proposal.encode().unwrap(),
        StateMachine::default().encode().unwrap(),
    ]
}

fn decode_all(bytes: &[u8]) {
    let _ = Proposal::decode(bytes);
    let _ = ConfContext::decode(bytes);
    let _ = StateMachine::decode(bytes);
}

proptest! {
    #[test]
    fn arbitrary_entries_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_entries_decode_or_are_refused(
        seed in 0usize..2,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = seeds()[seed].clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        decode_all(&bytes);
    }

    #[test]
    fn transport_frames_are_read_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let mut input = &bytes[..];
            // Small limits: a length past them must be refused before it is allocated.
            if let Ok(message) = read_message(&mut input, 64, 128).await {
                assert!(message.len() <= 128);
            }
        });
    }
}
