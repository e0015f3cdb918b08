//! The membership view: each configured peer up or down, and since when. Pure state: every
//! change takes the time it happens at, so tests drive it without a network or a clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use super::messages::{MemberStatus, MembershipReport, NodeInfo, PeerState};
use crate::config::NodeId;

/// A moment, on the monotonic clock (for timeouts) and the wall clock (for people).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn read() -> Self {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// A peer changed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub peer: NodeId,
    pub to: PeerState,
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
struct Peer {
    address: String,
    state: PeerState,
    since: SystemTime,
    /// Whether a ractor_cluster session with the peer is open and authenticated.
    linked: bool,
    last_heartbeat: Option<Instant>,
    info: Option<NodeInfo>,
}

/// One node's view of the others.
#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeInfo,
    cluster: String,
    timeout: Duration,
    peers: BTreeMap<NodeId, Peer>,
}

impl Membership {
    /// A view in which every peer is down until heard from.
    pub fn new(
        cluster: String,
        me: NodeInfo,
        peers: impl IntoIterator<Item = (NodeId, String)>,
        timeout: Duration,
        now: Now,
    ) -> Self {
        let peers = peers
            .into_iter()
            .filter(|(id, _)| *id != me.id)
            .map(|(id, address)| {
                let peer = Peer {
                    address,
                    state: PeerState::Down,
                    since: now.wall,
                    linked: false,
                    last_heartbeat: None,
                    info: None,
                };
                (id, peer)
            })
            .collect();
        Membership {
            me,
            cluster,
            timeout,
            peers,
        }
    }

    pub fn is_peer(&self, id: NodeId) -> bool {
        self.peers.contains_key(&id)
    }

    #[cfg(test)]
    fn is_linked(&self, id: NodeId) -> bool {
        self.peers.get(&id).is_some_and(|p| p.linked)
    }

    fn set(
        &mut self,
        id: NodeId,
        to: PeerState,
        reason: &'static str,
        now: Now,
    ) -> Option<Transition> {
        let peer = self.peers.get_mut(&id)?;
        if peer.state == to {
            return None;
        }
        peer.state = to;
        peer.since = now.wall;
        Some(Transition {
            peer: id,
            to,
            reason,
        })
    }

    /// A session with the peer authenticated. It is up once its first heartbeat arrives.
    pub fn on_linked(&mut self, id: NodeId) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.linked = true;
            p.last_heartbeat = None;
        }
    }

    /// The session with the peer closed: it is down at once.
    pub fn on_unlinked(&mut self, id: NodeId, now: Now) -> Option<Transition> {
        let peer = self.peers.get_mut(&id)?;
        peer.linked = false;
        peer.last_heartbeat = None;
        self.set(id, PeerState::Down, "link lost", now)
    }

    /// A heartbeat arrived. Counted only over an open session: a late one from a closed
    /// session must not revive a dead peer.
    pub fn on_heartbeat(&mut self, info: NodeInfo, now: Now) -> Option<Transition> {
        let id = info.id;
        let peer = self.peers.get_mut(&id)?;
        if !peer.linked {
            return None;
        }
        let restarted = peer
            .info
            .as_ref()
            .is_some_and(|old| old.started != info.started);
        peer.last_heartbeat = Some(now.mono);
        peer.info = Some(info);
        let reason = if restarted { "restarted" } else { "heartbeat" };
        self.set(id, PeerState::Up, reason, now)
    }

    /// Ages the view: a linked peer silent for longer than the timeout is down.
    pub fn on_tick(&mut self, now: Now) -> Vec<Transition> {
        let silent: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state == PeerState::Up)
            .filter(|(_, p)| {
                p.last_heartbeat
                    .is_none_or(|t| now.mono.saturating_duration_since(t) > self.timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        silent
            .into_iter()
            .filter_map(|id| self.set(id, PeerState::Down, "no heartbeat", now))
            .collect()
    }

    /// The table `arbor status` prints: this node first is not assumed; rows are by id.
    pub fn report(&self) -> MembershipReport {
        let me = MemberStatus {
            id: self.me.id,
            address: self.me.actors.clone(),
            state: PeerState::Up,
            since: self.me.started,
            info: Some(self.me.clone()),
        };
        let mut nodes: Vec<MemberStatus> = self
            .peers
            .iter()
            .map(|(id, p)| MemberStatus {
                id: *id,
                address: p.address.clone(),
                state: p.state,
                since: p.since,
                info: p.info.clone(),
            })
            .chain(std::iter::once(me))
            .collect();
        nodes.sort_by_key(|n| n.id);
        MembershipReport {
            cluster: self.cluster.clone(),
            answered_by: self.me.id,
            nodes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::messages::DeclaredResources;

    fn info(id: NodeId, started: u64) -> NodeInfo {
        NodeInfo {
            id,
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(started),
            actors: format!("127.0.0.1:{}", 7100 + id),
            resources: DeclaredResources {
                cpu: "1".into(),
                memory: "1GiB".into(),
                gpu: 0,
                gpus: vec![],
                gpu_memory: None,
                ipu: 0,
                custom: Default::default(),
            },
            labels: Default::default(),
        }
    }

    fn view(t0: Now) -> Membership {
        let peers = (1..=3).map(|i| (i, format!("127.0.0.1:{}", 7100 + i)));
        Membership::new("c".into(), info(1, 0), peers, Duration::from_secs(1), t0)
    }

    fn later(t: Now, ms: u64) -> Now {
        Now {
            mono: t.mono + Duration::from_millis(ms),
            wall: t.wall + Duration::from_millis(ms),
        }
    }

    #[test]
    fn peers_start_down_and_self_is_up() {
        let t0 = Now::read();
        let m = view(t0);
        let r = m.report();
        assert_eq!(
            r.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(r.nodes[0].state, PeerState::Up);
        assert!(
            r.nodes[1..]
                .iter()
                .all(|n| n.state == PeerState::Down && n.info.is_none())
        );
        assert!(!m.is_peer(1));
    }

    #[test]
    fn up_on_heartbeat_over_a_link_only() {
        let t0 = Now::read();
        let mut m = view(t0);
        assert_eq!(m.on_heartbeat(info(2, 5), t0), None, "no link yet");
        m.on_linked(2);
        let t1 = later(t0, 10);
        let tr = m.on_heartbeat(info(2, 5), t1).unwrap();
        assert_eq!((tr.peer, tr.to), (2, PeerState::Up));
        assert_eq!(m.report().nodes[1].since, t1.wall);
        assert_eq!(
            m.on_heartbeat(info(2, 5), later(t0, 20)),
            None,
            "already up"
        );
    }

    #[test]
    fn down_when_silent_past_the_timeout() {
        let t0 = Now::read();
        let mut m = view(t0);
        m.on_linked(2);
        m.on_heartbeat(info(2, 5), t0);
        assert!(m.on_tick(later(t0, 900)).is_empty());
        let tr = m.on_tick(later(t0, 1100));
        assert_eq!(tr.len(), 1);
        assert_eq!(
            (tr[0].peer, tr[0].to, tr[0].reason),
            (2, PeerState::Down, "no heartbeat")
        );
    }

    #[test]
    fn down_at_once_when_the_link_closes_and_up_again_after_restart() {
        let t0 = Now::read();
        let mut m = view(t0);
        m.on_linked(3);
        m.on_heartbeat(info(3, 5), t0);
        let tr = m.on_unlinked(3, later(t0, 5)).unwrap();
        assert_eq!(tr.to, PeerState::Down);
        assert!(!m.is_linked(3));
        assert_eq!(m.on_heartbeat(info(3, 9), later(t0, 6)), None, "stale beat");
        m.on_linked(3);
        let tr = m.on_heartbeat(info(3, 9), later(t0, 7)).unwrap();
        assert_eq!((tr.to, tr.reason), (PeerState::Up, "restarted"));
    }

    #[test]
    fn unknown_nodes_change_nothing() {
        let t0 = Now::read();
        let mut m = view(t0);
        m.on_linked(9);
        assert_eq!(m.on_heartbeat(info(9, 1), t0), None);
        assert_eq!(m.on_unlinked(9, t0), None);
        assert_eq!(m.report().nodes.len(), 3);
    }
}
