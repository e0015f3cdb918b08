//! Arbor's data plane: the actors that do the work on each node, the agent that supervises
//! them, and how callers reach them across nodes.
//!
//! # The rooms
//!
//! Libraries sit below, their actor wrappers above them in [`kinds`], and the [`agent`] on top:
//!
//! * [`agent`] — the node agent, root supervisor of one node's actors. The control plane says
//!   what should run here ([`agent::AgentMsg::Assign`], the whole set each time); the agent
//!   starts, stops and restarts replicas to match ([`supervision`] holds its restart policy:
//!   backoff, and a limit on failures in a window) and reports their state back.
//! * [`kinds`] — one module per actor kind: `embedder` (a BERT encoder with [`batching`]),
//!   `model` (a Llama decoder streaming tokens), `vector_partition` (one replica of one shard
//!   of a collection), `retrieval_coordinator`, and `echo`/`spin` for tests. Every replica
//!   answers [`replica::ReplicaMsg`], whatever its kind.
//! * [`partition`] — the vector partition as a library: the redb [`partition::store`], the
//!   in-memory index and metadata arena, filters, and [`partition::replication`]: primary-
//!   ordered writes with sequence numbers and epochs, catch-up from the primary, fencing.
//! * [`retrieval`] — the coordinator as a library: chunking, routing ids to partitions,
//!   ingest (through each partition's primary), query (fan out to in-sync replicas, hedged,
//!   merged), RAG.
//! * [`router`] — how a caller reaches a deployment: a running replica picked by least
//!   outstanding requests from the deployment's process group, read afresh per attempt.
//! * [`load`] — requests this process has in flight per deployment, counted by every router:
//!   what the node reports for autoscaling.
//! * [`stream`] — the client side of a model replica's token stream (start, poll, cancel).
//! * [`control`] — what actors need of the control plane without its Raft machinery: replica
//!   sets as last learned, this node's lease, and a way to propose replica-set changes.
//! * [`wire`] — payloads that cross nodes: bincode with a decode limit, never a panic on bytes
//!   from the network.
//!
//! # Rules the modules keep
//!
//! * Message enums only grow: a peer on another version drops a variant it does not know, so
//!   none is renamed, reordered or reused.
//! * Who is live is the control plane's word (replica sets, epochs, the node lease), never a
//!   node's own process-group view, which lags and differs between nodes.
//! * Policy is pure (batching, hedging budget, restart backoff, routing) and tested without
//!   actors; the actors only carry it out.

pub mod agent;
pub mod batching;
pub mod control;
pub mod kinds;
pub mod load;
pub mod partition;
pub mod replica;
pub mod retrieval;
pub mod router;
pub mod stream;
pub mod supervision;
pub mod wire;
