//! What link actors say to each other. Variants only ever grow: a peer running an older
//! version drops a variant it does not know, so none is renamed or reused.

use arbor_actors::wire::Wire;
use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use crate::config::NodeId;

/// Messages to a node's remote-capable link actor. Retired, never to be reused: `Membership`,
/// `ChangeMembership` and `Control`, which served the old CLI over the actor transport (clients
/// now come through the gateway, with a token).
#[derive(RactorClusterMessage)]
pub enum LinkMsg {
    /// A peer says it is alive, and what it offers.
    Heartbeat(Wire<Heartbeat>),
    /// The node's control-plane status, for `arbor cluster status`.
    #[rpc]
    RaftStatus(RpcReplyPort<Wire<Result<arbor_scheduler::NodeStatus, String>>>),
}

/// A heartbeat from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: NodeId,
    pub to: NodeId,
    pub info: NodeInfo,
}

pub use arbor_proto::cluster::{
    DeclaredResources, GpuDescription, MemberStatus, MembershipReport, NodeInfo, PeerState,
};

/// Fuzzing what a link actor decodes from a peer: arbitrary bytes, and a real heartbeat with
/// bytes changed or cut, must decode or be refused (never panic or allocate past the wire
/// limit). `PROPTEST_CASES=N cargo test -p arbor-node --lib link::messages` for a long run.
#[cfg(test)]
mod fuzz {
    use super::*;
    use arbor_actors::wire::{decode, encode};
    use proptest::prelude::*;

    fn heartbeat() -> Vec<u8> {
        encode(&Heartbeat {
            from: 2,
            to: 1,
            info: NodeInfo {
                id: 2,
                started: std::time::SystemTime::UNIX_EPOCH,
                actors: "127.0.0.1:7102".into(),
                resources: DeclaredResources {
                    cpu: "8".into(),
                    memory: "16GiB".into(),
                    gpu: 1,
                    gpus: vec![],
                    gpu_memory: Some("80GiB".into()),
                    ipu: 0,
                    custom: [("fpga".to_string(), 2)].into(),
                },
                labels: [("zone".to_string(), "a".to_string())].into(),
            },
        })
        .unwrap()
    }

    fn decode_all(bytes: &[u8]) {
        let _ = decode::<Heartbeat>(bytes);
        let _ = decode::<Result<arbor_scheduler::NodeStatus, String>>(bytes);
    }

    #[test]
    fn the_seed_round_trips() {
        let back: Heartbeat = decode(&heartbeat()).unwrap();
        assert_eq!(back.info.labels["zone"], "a");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            decode_all(&bytes);
        }

        #[test]
        fn mutated_heartbeats_decode_or_are_refused(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = heartbeat();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            decode_all(&bytes);
            decode_all(&bytes[..cut.index(bytes.len() + 1)]);
        }
    }
}
