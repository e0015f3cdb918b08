//! Links between nodes: every node keeps a ractor_cluster session to every other configured
//! node, heartbeats over it, and keeps a membership view of who is up and since when.
//!
//! ractor_cluster neither re-dials nor acts on missed heartbeats, so this module does both:
//! - [`supervisor::LinkSupervisor`] dials peers (the node with the lower id dials, so two
//!   nodes never race to connect and a failed handshake always means a real refusal),
//!   re-dials with capped exponential backoff, sends heartbeats and ages the view;
//! - [`actor::LinkActor`] is the node's one remote-capable link actor: it receives peers'
//!   heartbeats and answers membership queries (`arbor status`);
//! - [`membership::Membership`] is the pure state of the view, tested without a network.

pub mod actor;
pub mod membership;
pub mod messages;
pub mod supervisor;
pub mod tls;

use crate::config::NodeId;

/// The process-group scope of a cluster's link actors.
pub fn scope(cluster: &str) -> String {
    format!("arbor/{cluster}")
}

/// The process group a node's link actor joins. One group per node lets a peer find that
/// node's link actor among the remote actors of the one session it has with it.
pub fn link_group(node: NodeId) -> String {
    format!("arbor.link.{node}")
}

/// The name a node presents in the ractor_cluster handshake.
pub fn node_name(cluster: &str, node: NodeId) -> String {
    format!("{cluster}/{node}")
}

/// What a handshake name says about the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerName {
    /// A node of this cluster.
    Node(NodeId),
    /// A command-line client of this cluster (`arbor status`).
    Client,
    /// Something else: another cluster, or a name this version does not know.
    Foreign(String),
}

/// Classifies the name a peer presented. ractor_cluster appends `@host` to the name a node
/// was given; the host is not part of the identity.
pub fn parse_peer_name(cluster: &str, name: &str) -> PeerName {
    let bare = name.rsplit_once('@').map_or(name, |(n, _)| n);
    match bare.strip_prefix(cluster).and_then(|r| r.strip_prefix('/')) {
        Some(rest) if rest.starts_with("cli-") => PeerName::Client,
        Some(rest) => rest
            .parse()
            .map(PeerName::Node)
            .unwrap_or_else(|_| PeerName::Foreign(name.to_owned())),
        None => PeerName::Foreign(name.to_owned()),
    }
}

/// Finds a member of a process group among the remote actors of one session: the actor as
/// reached over that very link.
///
/// Several sessions may mirror an actor with the same pid (and, within one process, even the
/// local actor is a group member), so the target must be a child of *this* session.
pub fn remote_member(
    scope: &str,
    group: &str,
    session: &ractor::ActorCell,
) -> Option<ractor::ActorCell> {
    let pids: Vec<u64> = ractor::pg::get_scoped_members(&scope.to_owned(), &group.to_owned())
        .iter()
        .map(|m| m.get_id().pid())
        .collect();
    session
        .get_children()
        .into_iter()
        .find(|c| !c.get_id().is_local() && pids.contains(&c.get_id().pid()))
}

/// Finds a peer's link actor among the remote actors of our session with that peer.
pub fn peer_link_actor(
    cluster: &str,
    peer: NodeId,
    session: &ractor::ActorCell,
) -> Option<ractor::ActorRef<messages::LinkMsg>> {
    remote_member(&scope(cluster), &link_group(peer), session).map(ractor::ActorRef::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names() {
        assert_eq!(parse_peer_name("c", &node_name("c", 3)), PeerName::Node(3));
        assert_eq!(parse_peer_name("c", "c/cli-42"), PeerName::Client);
        assert_eq!(
            parse_peer_name("c", "other/3"),
            PeerName::Foreign("other/3".into())
        );
        assert_eq!(
            parse_peer_name("c", "cx/3"),
            PeerName::Foreign("cx/3".into())
        );
        assert_eq!(parse_peer_name("c", "c/x"), PeerName::Foreign("c/x".into()));
        assert_eq!(parse_peer_name("c", "c/2@127.0.0.1"), PeerName::Node(2));
        assert_eq!(parse_peer_name("c", "c/cli-9@h"), PeerName::Client);
    }
}
