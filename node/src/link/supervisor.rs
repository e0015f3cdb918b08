//! The link supervisor: dials peers, re-dials after a loss with capped exponential backoff,
//! sends heartbeats, and keeps the membership view.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbor_actors::wire::Wire;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage, NodeSessionMessage, RactorMessage};

use super::membership::{Membership, Now, Transition};
use super::messages::{Heartbeat, LinkMsg, MembershipReport, NodeInfo, PeerState};
use super::{PeerName, parse_peer_name, peer_link_actor};
use crate::config::{LinkTiming, NodeId};

/// What happened to a ractor_cluster session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionPhase {
    Opened,
    Authenticated,
    Ready,
    Closed,
}

/// A session event, as the node server reported it.
#[derive(Debug, Clone)]
pub struct SessionEvent {
    pub phase: SessionPhase,
    pub session: ActorRef<NodeSessionMessage>,
    pub peer_name: Option<String>,
    pub peer_addr: String,
    pub inbound: bool,
}

impl SessionEvent {
    fn new(phase: SessionPhase, ses: NodeServerSessionInformation) -> Self {
        SessionEvent {
            phase,
            session: ses.actor,
            peer_name: ses.peer_name.map(|n| n.name),
            peer_addr: ses.peer_addr,
            inbound: ses.is_server,
        }
    }
}

#[derive(RactorMessage)]
pub enum SupervisorMsg {
    Tick,
    Session(SessionEvent),
    DialFailed {
        peer: NodeId,
        error: String,
    },
    Heartbeat(Heartbeat),
    Report(RpcReplyPort<MembershipReport>),
    /// The session that carries the link with a peer, if linked.
    SessionWith(NodeId, RpcReplyPort<Option<ActorRef<NodeSessionMessage>>>),
}

/// Forwards the node server's session events to the supervisor.
pub struct SessionEvents(pub ActorRef<SupervisorMsg>);

impl SessionEvents {
    fn send(&self, phase: SessionPhase, ses: NodeServerSessionInformation) {
        let _ = self
            .0
            .cast(SupervisorMsg::Session(SessionEvent::new(phase, ses)));
    }
}

impl NodeEventSubscription for SessionEvents {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        self.send(SessionPhase::Opened, ses);
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        self.send(SessionPhase::Closed, ses);
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.send(SessionPhase::Authenticated, ses);
    }
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        self.send(SessionPhase::Ready, ses);
    }
}

/// Where a dial to one peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dial {
    /// Dial at this time (now, or after a backoff).
    Waiting { at: Instant, backoff: Duration },
    /// A connection was opened at `since`; its handshake has not finished.
    InFlight { since: Instant, backoff: Duration },
    /// Linked: nothing to do until the link is lost.
    Linked,
}

/// The next delay after one that failed: doubled, capped. Pure policy.
pub fn next_backoff(current: Duration, timing: &LinkTiming) -> Duration {
    (current * 2).clamp(timing.redial_min, timing.redial_max)
}

pub struct LinkSupervisor;

pub struct SupervisorArgs {
    pub cluster: String,
    pub me: NodeInfo,
    pub peers: Vec<(NodeId, SocketAddr)>,
    pub timing: LinkTiming,
    pub server: ActorRef<NodeServerMessage>,
    /// Mutual TLS on the links; `None` in an insecure (loopback) cluster.
    pub tls: Option<super::tls::LinkTls>,
}

struct Session {
    peer: Option<NodeId>,
    authenticated: bool,
    /// Opened by a peer, and when: one that has not authenticated within the handshake
    /// timeout is closed (an idle connection must not hold a slot).
    inbound_since: Option<Instant>,
    handle: ActorRef<NodeSessionMessage>,
}

/// Refusals remembered for de-duplicating their warnings; past this the set starts over, so
/// that a flood of distinct names cannot grow it.
const REFUSALS_REMEMBERED: usize = 256;

/// A peer's self-declared name as it may appear in a log line: at most 128 characters,
/// escaped (a newline in a name must not forge a log line).
fn loggable(name: &str) -> String {
    let short: String = name.chars().take(128).collect();
    let escaped = format!("{short:?}");
    if name.chars().count() > 128 {
        format!("{escaped}…")
    } else {
        escaped
    }
}

struct Link {
    session: ActorRef<NodeSessionMessage>,
    target: Option<ActorRef<LinkMsg>>,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    view: Membership,
    sessions: HashMap<ActorId, Session>,
    links: HashMap<NodeId, Link>,
    dials: HashMap<NodeId, Dial>,
    last_beat: Option<Instant>,
    ticker: Option<JoinHandle<()>>,
    /// Peers whose refusal was already logged at warn level; a peer that keeps failing
    /// (say, a wrong secret) logs once, not at every re-dial, until it links again.
    refusals_logged: HashSet<String>,
}

impl SupervisorState {
    fn addr_of(&self, peer: NodeId) -> Option<SocketAddr> {
        self.args
            .peers
            .iter()
            .find(|(id, _)| *id == peer)
            .map(|(_, a)| *a)
    }

    fn peer_at(&self, addr: &str) -> Option<NodeId> {
        self.args
            .peers
            .iter()
            .find(|(_, a)| a.to_string() == addr)
            .map(|(id, _)| *id)
    }

    fn log(&self, transitions: impl IntoIterator<Item = Transition>) {
        for t in transitions {
            let addr = self
                .addr_of(t.peer)
                .map(|a| a.to_string())
                .unwrap_or_default();
            match t.to {
                PeerState::Up => {
                    tracing::info!(peer = t.peer, %addr, reason = t.reason, "node {} is up", t.peer)
                }
                PeerState::Down => {
                    tracing::warn!(peer = t.peer, %addr, reason = t.reason, "node {} is down", t.peer)
                }
            }
        }
    }

    /// A dial failed or a handshake did not finish: wait, then try again with a longer delay.
    fn back_off(&mut self, peer: NodeId, now: Instant) {
        let timing = self.args.timing;
        if let Some(dial) = self.dials.get_mut(&peer) {
            let backoff = match *dial {
                Dial::Waiting { backoff, .. } | Dial::InFlight { backoff, .. } => backoff,
                Dial::Linked => timing.redial_min,
            };
            *dial = Dial::Waiting {
                at: now + backoff,
                backoff: next_backoff(backoff, &timing),
            };
        }
    }

    /// Closes inbound sessions that have not authenticated within the handshake timeout.
    fn close_stalled(&mut self, now: Instant) {
        let limit = self.args.timing.handshake_timeout;
        for s in self.sessions.values() {
            if !s.authenticated
                && s.inbound_since
                    .is_some_and(|since| now.duration_since(since) > limit)
            {
                s.handle.stop(Some(
                    "no authentication within the handshake timeout".into(),
                ));
            }
        }
    }

    fn beat(&mut self) {
        let cluster = self.args.cluster.clone();
        for (peer, link) in &mut self.links {
            if link.target.is_none() {
                link.target = peer_link_actor(&cluster, *peer, &link.session.get_cell());
            }
            let Some(target) = &link.target else { continue };
            let beat = Heartbeat {
                from: self.args.me.id,
                to: *peer,
                info: self.args.me.clone(),
            };
            if let Err(e) = target.cast(LinkMsg::Heartbeat(Wire::new(beat))) {
                tracing::debug!(peer, "heartbeat not sent: {e}");
            }
        }
    }

    fn dial_due(&mut self, myself: &ActorRef<SupervisorMsg>, now: Instant) {
        let timing = self.args.timing;
        let due: Vec<NodeId> = self
            .dials
            .iter()
            .filter(|(_, d)| match **d {
                Dial::Waiting { at, .. } => now >= at,
                Dial::InFlight { since, .. } => {
                    now.duration_since(since) > timing.handshake_timeout
                }
                Dial::Linked => false,
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if let Some(Dial::InFlight { .. }) = self.dials.get(&peer) {
                tracing::debug!(peer, "handshake timed out");
                self.back_off(peer, now);
                continue;
            }
            let Some(addr) = self.addr_of(peer) else {
                continue;
            };
            let backoff = match self.dials.get(&peer) {
                Some(Dial::Waiting { backoff, .. }) => *backoff,
                _ => timing.redial_min,
            };
            self.dials.insert(
                peer,
                Dial::InFlight {
                    since: now,
                    backoff,
                },
            );
            let server = self.args.server.clone();
            let me = myself.clone();
            let tls = self.args.tls.clone();
            tokio::spawn(async move {
                let dialed = match &tls {
                    Some(tls) => {
                        super::tls::dial(&server, tls, peer, addr, timing.handshake_timeout).await
                    }
                    None => ractor_cluster::client_connect(&server, addr)
                        .await
                        .map_err(|e| e.to_string()),
                };
                if let Err(error) = dialed {
                    let _ = me.cast(SupervisorMsg::DialFailed { peer, error });
                }
            });
        }
    }

    fn on_session(&mut self, ev: SessionEvent) {
        let id = ev.session.get_id();
        let now = Now::read();
        match ev.phase {
            SessionPhase::Opened => {
                let peer = if ev.inbound {
                    None
                } else {
                    self.peer_at(&ev.peer_addr)
                };
                self.sessions.insert(
                    id,
                    Session {
                        peer,
                        authenticated: false,
                        inbound_since: ev.inbound.then_some(now.mono),
                        handle: ev.session.clone(),
                    },
                );
            }
            SessionPhase::Authenticated => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.authenticated = true;
                }
            }
            SessionPhase::Ready => {
                let name = ev.peer_name.unwrap_or_default();
                let certified = match (&self.args.tls, parse_peer_name(&self.args.cluster, &name)) {
                    // A node may only link as the node its certificate names.
                    (Some(tls), PeerName::Node(peer)) if ev.inbound => {
                        tls.certified().check(&ev.peer_addr, peer)
                    }
                    _ => Ok(()),
                };
                if let Err(why) = certified {
                    tracing::warn!(
                        name = %loggable(&name),
                        addr = %ev.peer_addr,
                        "refused a link: {why}"
                    );
                    ev.session.stop(Some("certificate of another node".into()));
                    return;
                }
                match parse_peer_name(&self.args.cluster, &name) {
                    PeerName::Node(peer) if self.view.is_peer(peer) => {
                        if let Some(s) = self.sessions.get_mut(&id) {
                            s.peer = Some(peer);
                            s.authenticated = true;
                        }
                        tracing::debug!(peer, addr = %ev.peer_addr, "linked");
                        self.refusals_logged.remove(&format!("node {peer}"));
                        self.links.insert(
                            peer,
                            Link {
                                session: ev.session,
                                target: None,
                            },
                        );
                        self.view.on_linked(peer);
                        if let Some(d) = self.dials.get_mut(&peer) {
                            *d = Dial::Linked;
                        }
                        // Let the peer see us at once rather than at the next beat.
                        self.beat();
                    }
                    PeerName::Client => {
                        tracing::debug!(addr = %ev.peer_addr, "client connected");
                    }
                    PeerName::Node(_) | PeerName::Foreign(_) => {
                        tracing::warn!(
                            name = %loggable(&name),
                            addr = %ev.peer_addr,
                            "refused a link: {} is not a node of cluster {} in our cluster.toml",
                            loggable(&name),
                            self.args.cluster
                        );
                        ev.session.stop(Some("not a member of this cluster".into()));
                    }
                }
            }
            SessionPhase::Closed => {
                if let Some(tls) = &self.args.tls {
                    tls.certified().forget(&ev.peer_addr);
                }
                let session = self.sessions.remove(&id);
                let peer = session.as_ref().and_then(|s| s.peer).or_else(|| {
                    ev.peer_name.as_deref().and_then(|n| {
                        match parse_peer_name(&self.args.cluster, n) {
                            PeerName::Node(p) => Some(p),
                            _ => None,
                        }
                    })
                });
                let authenticated = session.as_ref().is_some_and(|s| s.authenticated);
                if !authenticated {
                    // Keyed by node, or by address for whoever else: a name is the peer's to
                    // choose, so a flood of fresh names must not each log, or be remembered.
                    let (who, key) = match peer {
                        Some(p) => (format!("node {p}"), format!("node {p}")),
                        None => (
                            ev.peer_name
                                .as_deref()
                                .map_or_else(|| "a peer".into(), loggable),
                            address_of(&ev.peer_addr),
                        ),
                    };
                    if self.refusals_logged.len() >= REFUSALS_REMEMBERED {
                        self.refusals_logged.clear();
                    }
                    let first = self.refusals_logged.insert(key);
                    let message = format!(
                        "link with {who} at {} refused: the handshake failed; check that both nodes use the same cluster secret",
                        ev.peer_addr
                    );
                    if first {
                        tracing::warn!(addr = %ev.peer_addr, "{message}");
                    } else {
                        tracing::debug!(addr = %ev.peer_addr, "{message}");
                    }
                }
                let Some(peer) = peer else { return };
                // Only the session that carries the link takes it down.
                if self
                    .links
                    .get(&peer)
                    .is_some_and(|l| l.session.get_id() == id)
                {
                    self.links.remove(&peer);
                    let t = self.view.on_unlinked(peer, now);
                    self.log(t);
                    if self.dials.contains_key(&peer) {
                        self.dials.insert(
                            peer,
                            Dial::Waiting {
                                at: now.mono,
                                backoff: self.args.timing.redial_min,
                            },
                        );
                    }
                } else if matches!(self.dials.get(&peer), Some(Dial::InFlight { .. })) {
                    self.back_off(peer, now.mono);
                }
            }
        }
    }
}

impl Actor for LinkSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let now = Now::read();
        let view = Membership::new(
            args.cluster.clone(),
            args.me.clone(),
            args.peers.iter().map(|(id, a)| (*id, a.to_string())),
            args.timing.peer_timeout,
            now,
        );
        // The node with the lower id dials: one dialer per pair, never a race.
        let dials = args
            .peers
            .iter()
            .filter(|(id, _)| *id > args.me.id)
            .map(|(id, _)| {
                (
                    *id,
                    Dial::Waiting {
                        at: now.mono,
                        backoff: args.timing.redial_min,
                    },
                )
            })
            .collect();
        let tick = (args.timing.heartbeat_interval / 2).max(Duration::from_millis(10));
        let ticker = myself.send_interval(tick, || SupervisorMsg::Tick);
        Ok(SupervisorState {
            args,
            view,
            sessions: HashMap::new(),
            links: HashMap::new(),
            dials,
            last_beat: None,
            ticker: Some(ticker),
            refusals_logged: HashSet::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Tick => {
                let now = Now::read();
                let t = state.view.on_tick(now);
                // A peer silent past its timeout over a link that is still open (frozen,
                // behind a dead route) is cut off here: its session ends, so its actors leave
                // this node's process groups and callers stop picking replicas that cannot
                // answer. It links again once it answers.
                for silent in t.iter().filter(|t| t.to == PeerState::Down) {
                    if let Some(link) = state.links.get(&silent.peer) {
                        link.session
                            .stop(Some("the peer sent no heartbeat within its timeout".into()));
                    }
                }
                state.log(t);
                state.close_stalled(now.mono);
                let beat_due = state.last_beat.is_none_or(|t| {
                    now.mono.duration_since(t) >= state.args.timing.heartbeat_interval
                });
                if beat_due {
                    state.last_beat = Some(now.mono);
                    state.beat();
                }
                state.dial_due(&myself, now.mono);
            }
            SupervisorMsg::Session(ev) => state.on_session(ev),
            SupervisorMsg::DialFailed { peer, error } => {
                tracing::debug!(peer, "dial failed: {error}");
                state.back_off(peer, Instant::now());
            }
            SupervisorMsg::Heartbeat(beat) => {
                let t = state.view.on_heartbeat(beat.info, Now::read());
                state.log(t);
            }
            SupervisorMsg::Report(reply) => {
                let _ = reply.send(state.view.report());
            }
            SupervisorMsg::SessionWith(peer, reply) => {
                let _ = reply.send(state.links.get(&peer).map(|l| l.session.clone()));
            }
        }
        Ok(())
    }
}

/// The address part of a session's reported address (`IP:PORT`, or `IP:PORT#N` for a TLS
/// connection): what refusals are keyed by.
fn address_of(label: &str) -> String {
    let addr = label.split('#').next().unwrap_or(label);
    addr.parse::<SocketAddr>()
        .map_or_else(|_| addr.chars().take(64).collect(), |a| a.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let t = LinkTiming::default();
        let mut d = t.redial_min;
        let mut seen = vec![d];
        for _ in 0..6 {
            d = next_backoff(d, &t);
            seen.push(d);
        }
        assert_eq!(seen[1], t.redial_min * 2);
        assert!(seen.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*seen.last().unwrap(), t.redial_max);
    }
}
