//! Why a replica stays pending, in words a person can act on.

use std::collections::BTreeMap;
use std::fmt;

use crate::resources::{ResourceKind, Resources};

use super::LabelConstraint;

/// The first filter a node fails for a request. Filters run in this order, so a node that
/// is both draining and short of memory counts as draining.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    NotReady,
    Draining,
    /// The first of the request's label constraints the node fails.
    Constraint(LabelConstraint),
    /// The node already runs a replica of the deployment.
    AntiAffinity,
    /// Not enough of this resource is free.
    Insufficient(ResourceKind),
    /// Enough GPU is free in total, but not on few enough devices (for example two halves
    /// free on two devices for a request of one whole GPU).
    GpuFragmented,
    /// A decision's GPU devices do not match the request, or a device lacks the share it was
    /// given (found when re-checking a decision, see [`super::NodeView::admit`]).
    GpuAssignment {
        index: Option<u32>,
    },
}

impl Rejection {
    /// How far down the filter funnel a node got before failing.
    fn stage(&self) -> u8 {
        match self {
            Rejection::NotReady | Rejection::Draining => 0,
            Rejection::Constraint(_) => 1,
            Rejection::AntiAffinity => 2,
            Rejection::Insufficient(_)
            | Rejection::GpuFragmented
            | Rejection::GpuAssignment { .. } => 3,
        }
    }

    /// The resource this rejection is about, if any.
    fn resource(&self) -> Option<ResourceKind> {
        match self {
            Rejection::Insufficient(kind) => Some(kind.clone()),
            Rejection::GpuFragmented | Rejection::GpuAssignment { .. } => Some(ResourceKind::Gpu),
            _ => None,
        }
    }
}

impl fmt::Display for Rejection {
    /// What is wrong with one node, as a clause: "node 3 is draining".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotReady => f.write_str("is not ready"),
            Rejection::Draining => f.write_str("is draining"),
            Rejection::Constraint(c) => write!(f, "fails {c}"),
            Rejection::AntiAffinity => {
                f.write_str("already runs a replica of the deployment (anti-affinity)")
            }
            Rejection::Insufficient(kind) => write!(f, "lacks free {kind}"),
            Rejection::GpuFragmented => f.write_str("has GPU room only in fragments"),
            Rejection::GpuAssignment { index: Some(i) } => {
                write!(f, "lacks the share of GPU device {i} assigned")
            }
            Rejection::GpuAssignment { index: None } => {
                f.write_str("got GPU devices that do not add up to the request")
            }
        }
    }
}

/// Why no node could take a request: what it needs and, for every node, the first filter it
/// failed, counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoFit {
    pub needs: Resources,
    pub deployment: String,
    /// Nodes considered, all of them rejected.
    pub nodes: usize,
    /// Rejections with their node counts, most frequent first.
    pub rejections: Vec<(Rejection, usize)>,
}

impl NoFit {
    pub fn new(
        needs: Resources,
        deployment: String,
        nodes: usize,
        counts: BTreeMap<Rejection, usize>,
    ) -> Self {
        let mut rejections: Vec<(Rejection, usize)> = counts.into_iter().collect();
        // Stable: equal counts keep filter order.
        rejections.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        NoFit {
            needs,
            deployment,
            nodes,
            rejections,
        }
    }

    /// The headline: what the request needs that no node offers.
    fn headline(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let furthest = self.rejections.iter().map(|(r, _)| r.stage()).max();
        let reached = |stage: u8| self.rejections.iter().any(|(r, _)| r.stage() == stage);
        match furthest {
            None => write!(f, "needs {}; no node has registered", self.needs),
            Some(0) => write!(f, "needs {}; no node is ready and undrained", self.needs),
            Some(1) => {
                let failed: Vec<String> = self
                    .rejections
                    .iter()
                    .filter_map(|(r, _)| match r {
                        Rejection::Constraint(c) => Some(c.to_string()),
                        _ => None,
                    })
                    .collect();
                write!(f, "needs {}; no ready node matches", failed.join(" and "))
            }
            Some(2) => write!(
                f,
                "needs a node without a replica of {} (anti-affinity); every ready node that \
                 matches already runs one",
                self.deployment
            ),
            Some(_) => {
                let mut qualifier = String::new();
                if reached(1) {
                    qualifier.push_str(" matching the constraints");
                }
                if reached(2) {
                    qualifier.push_str(&format!(" without a replica of {}", self.deployment));
                }
                let mut kinds: Vec<ResourceKind> = self
                    .rejections
                    .iter()
                    .filter_map(|(r, _)| r.resource())
                    .collect();
                kinds.sort();
                kinds.dedup();
                match kinds.as_slice() {
                    [ResourceKind::Gpu] => write!(
                        f,
                        "needs gpu={}; no ready node{qualifier} has a free GPU",
                        self.needs.gpu
                    ),
                    [kind] => write!(
                        f,
                        "needs {kind}={}; no ready node{qualifier} has that much free {kind}",
                        self.needs.amount_of(kind)
                    ),
                    _ => write!(
                        f,
                        "needs {}; no ready node{qualifier} has room for it",
                        self.needs
                    ),
                }
            }
        }
    }
}

impl fmt::Display for NoFit {
    /// "needs gpu=1; no ready node has a free GPU (3 nodes: 2 lack gpu, 1 not ready)"
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.headline(f)?;
        if self.nodes == 0 {
            return Ok(());
        }
        let noun = if self.nodes == 1 { "node" } else { "nodes" };
        write!(f, " ({} {noun}: ", self.nodes)?;
        for (i, (rejection, n)) in self.rejections.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match rejection {
                Rejection::NotReady => write!(f, "{n} not ready")?,
                Rejection::Draining => write!(f, "{n} draining")?,
                Rejection::Constraint(c) => write!(f, "{n} fail {c}")?,
                Rejection::AntiAffinity => write!(f, "{n} already run a replica")?,
                Rejection::Insufficient(kind) => write!(f, "{n} lack {kind}")?,
                Rejection::GpuFragmented => write!(f, "{n} have GPU room only in fragments")?,
                Rejection::GpuAssignment { .. } => write!(f, "{n} lack the assigned GPUs")?,
            }
        }
        f.write_str(")")
    }
}

/// Why a replica is pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingReason {
    /// No node can take it.
    NoFit(NoFit),
    /// It belongs to a gang one of whose members could not be placed, so none was.
    Gang {
        gang: String,
        deployment: String,
        replica: u32,
        cause: NoFit,
    },
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PendingReason::NoFit(cause) => cause.fmt(f),
            PendingReason::Gang {
                gang,
                deployment,
                replica,
                cause,
            } => write!(
                f,
                "gang {gang} placed nothing: replica {replica} of {deployment} {cause}"
            ),
        }
    }
}
