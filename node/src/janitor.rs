//! Removes the partition files this node no longer needs: those of deleted collections (a
//! collection created again has another incarnation, so it never sees them) and those of
//! replicas that moved away (a replica placed again starts from a new file). A node that was
//! down when that happened removes them once it is back.
//!
//! It decides on a linearizable read only, so that a node behind the control plane never
//! removes a file it is still meant to serve; and it leaves alone any file of a generation
//! or incarnation newer than that read knew (a placement made just after it).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arbor_actors::kinds::PartitionConfig;
use arbor_actors::partition::StoreName;
use arbor_actors::partition::store::partitions_dir;
use arbor_scheduler::RaftHandle;
use arbor_scheduler::state::ClusterState;
use tokio::task::JoinHandle;

use crate::config::NodeId;

/// How often the files are looked at.
const EVERY: Duration = Duration::from_secs(5);

/// What a node may keep, as of one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keep {
    files: HashSet<StoreName>,
    last_generation: u64,
    last_incarnation: u64,
}

impl Keep {
    /// The partition files `node` holds placements for in `state`. Pure.
    pub fn of(state: &ClusterState, node: NodeId) -> Keep {
        let files = state
            .placements
            .values()
            .filter(|p| p.node == node)
            .filter_map(|p| {
                let spec = &state.deployments.get(&p.deployment)?.spec;
                spec.collection.as_ref()?;
                let config: PartitionConfig = serde_json::from_str(&spec.config).ok()?;
                Some(StoreName {
                    collection: config.collection,
                    incarnation: config.incarnation,
                    partition: config.partition,
                    generation: p.generation,
                })
            })
            .collect();
        Keep {
            files,
            last_generation: state.last_generation,
            last_incarnation: state.last_incarnation,
        }
    }

    /// Whether the file named `name` may be removed.
    pub fn removable(&self, name: &StoreName) -> bool {
        name.generation <= self.last_generation
            && name.incarnation <= self.last_incarnation
            && !self.files.contains(name)
    }
}

/// Removes from `data_dir` the partition files `keep` does not name; returns them.
pub fn sweep(data_dir: &Path, keep: &Keep) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(partitions_dir(data_dir)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        // A store, or the HNSW graph saved beside it (`<store>.hnsw`, `.hnsw.tmp` while
        // being written).
        let store_file = file_name.to_str().map(|n| {
            n.strip_suffix(".hnsw.tmp")
                .or_else(|| n.strip_suffix(".hnsw"))
                .unwrap_or(n)
        });
        let Some(name) = store_file.and_then(StoreName::parse) else {
            continue;
        };
        if !keep.removable(&name) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "removed a partition file this node no longer holds");
                removed.push(path);
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), "cannot remove a stale partition file: {e}")
            }
        }
    }
    removed
}

/// Sweeps `data_dir` for node `node` every few seconds.
pub fn spawn(raft: RaftHandle, node: NodeId, data_dir: PathBuf) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Ok(keep) = raft.read(move |s| Keep::of(s, node)).await {
                let dir = data_dir.clone();
                let _ = tokio::task::spawn_blocking(move || sweep(&dir, &keep)).await;
            }
            tokio::time::sleep(EVERY).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_of_known_generations_not_placed_here_are_removable() {
        let name = |incarnation, generation| StoreName {
            collection: "docs".into(),
            incarnation,
            partition: 0,
            generation,
        };
        let keep = Keep {
            files: HashSet::from([name(2, 7)]),
            last_generation: 9,
            last_incarnation: 2,
        };
        assert!(!keep.removable(&name(2, 7)), "placed here");
        assert!(keep.removable(&name(2, 5)), "moved away");
        assert!(keep.removable(&name(1, 7)), "a deleted incarnation");
        assert!(!keep.removable(&name(2, 10)), "newer than the read");
        assert!(
            !keep.removable(&name(3, 1)),
            "a collection newer than the read"
        );
        let dir = tempfile::tempdir().unwrap();
        let folder = partitions_dir(dir.path());
        std::fs::create_dir_all(&folder).unwrap();
        for n in [name(2, 7), name(2, 5), name(3, 1)] {
            std::fs::write(folder.join(n.file_name()), b"").unwrap();
            // The HNSW graph saved beside a store goes with it.
            std::fs::write(folder.join(format!("{}.hnsw", n.file_name())), b"").unwrap();
        }
        std::fs::write(folder.join("notes.txt"), b"").unwrap();
        let mut removed = sweep(dir.path(), &keep);
        removed.sort();
        let gone = name(2, 5).file_name();
        assert_eq!(
            removed,
            vec![folder.join(&gone), folder.join(format!("{gone}.hnsw"))]
        );
        assert!(folder.join("notes.txt").exists());
        assert!(
            folder
                .join(format!("{}.hnsw", name(2, 7).file_name()))
                .exists()
        );
    }
}
