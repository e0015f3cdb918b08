//! Collections and the deployments they own. A collection of P partitions × R replicas is
//! P deployments of kind `vector_partition` (`{collection}.p{i}`, R replicas each, with
//! anti-affinity so a partition's replicas sit on distinct nodes). They share the collection
//! as a gang: the reconciler places a new collection's P × R actors all together or not at
//! all, and after that replaces lost replicas one by one like any deployment's. Deleting the
//! collection deletes them and every placement of them.

use super::{
    ClusterState, CollectionSpec, Deployment, DeploymentSpec, ReplicaSet, exists, not_found,
};
use crate::command::{CommandOutcome, ObjectKind, Rejection};
use crate::placement::Strategy;

/// The actor kind of a partition replica.
pub const PARTITION_KIND: &str = "vector_partition";

impl CollectionSpec {
    /// The deployment that holds partition `partition`.
    pub fn partition_deployment(&self, partition: u32) -> String {
        arbor_proto::partition_deployment(&self.name, partition)
    }

    /// The deployment of partition `partition`, as creating the collection records it.
    pub fn partition_spec(&self, partition: u32) -> DeploymentSpec {
        DeploymentSpec {
            name: self.partition_deployment(partition),
            kind: PARTITION_KIND.into(),
            replicas: self.replication,
            resources: self.resources.clone(),
            strategy: Strategy::Spread,
            constraints: vec![],
            anti_affinity: true,
            max_unavailable: 1,
            version: String::new(),
            // The name is checked to need no escaping.
            config: serde_json::json!({
                "collection": self.name,
                "incarnation": self.incarnation,
                "partition": partition,
                "dim": self.dimension,
                "metric": self.metric,
                "index": self.index,
                "quantization": self.quantization,
            })
            .to_string(),
            collection: Some(self.name.clone()),
            idempotent: false,
            autoscaling: None,
        }
    }

    fn validate(&self) -> Result<(), Rejection> {
        let invalid = |why: String| {
            Err(Rejection::Invalid(format!(
                "collection {:?}: {why}",
                self.name
            )))
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return invalid("the name must be letters, digits, '-' or '_'".into());
        }
        if self.name.len() > super::MAX_NAME_LEN {
            return invalid(format!(
                "the name is {} bytes long; at most {} are allowed",
                self.name.len(),
                super::MAX_NAME_LEN
            ));
        }
        if self.dimension == 0 || self.dimension > 65_536 {
            return invalid(format!("dimension {} is not in 1..=65536", self.dimension));
        }
        if self.partitions == 0 || self.partitions > 4096 {
            return invalid(format!("partitions {} is not in 1..=4096", self.partitions));
        }
        if self.replication == 0 || self.replication > 16 {
            return invalid(format!("replication {} is not in 1..=16", self.replication));
        }
        if let Err(e) = self.resources.validate() {
            return invalid(format!("resources: {e}"));
        }
        if let Err(e) = self.index.validate() {
            return invalid(e.0);
        }
        Ok(())
    }
}

impl ClusterState {
    pub(super) fn create_collection(
        &mut self,
        spec: &CollectionSpec,
    ) -> Result<CommandOutcome, Rejection> {
        spec.validate()?;
        if self.collections.contains_key(&spec.name) {
            return Err(exists(ObjectKind::Collection, &spec.name));
        }
        if !self.deployments.contains_key(&spec.embedder) {
            return Err(Rejection::Invalid(format!(
                "collection {:?}: embedder deployment {:?} does not exist; deploy it first",
                spec.name, spec.embedder
            )));
        }
        let mut spec = spec.clone();
        spec.incarnation = self.last_incarnation + 1;
        let partitions: Vec<DeploymentSpec> = (0..spec.partitions)
            .map(|p| spec.partition_spec(p))
            .collect();
        if let Some(taken) = partitions
            .iter()
            .find(|d| self.deployments.contains_key(&d.name))
        {
            return Err(Rejection::Invalid(format!(
                "collection {:?}: a deployment named {:?} already exists",
                spec.name, taken.name
            )));
        }
        self.last_incarnation = spec.incarnation;
        for d in partitions {
            self.replica_sets
                .insert(d.name.clone(), ReplicaSet::default());
            self.deployments.insert(
                d.name.clone(),
                Deployment {
                    spec: d,
                    version: 1,
                    pending_reason: None,
                    previous: None,
                },
            );
        }
        self.collections.insert(spec.name.clone(), spec);
        Ok(CommandOutcome::Done)
    }

    pub(super) fn delete_collection(&mut self, name: &str) -> Result<CommandOutcome, Rejection> {
        self.collections
            .remove(name)
            .ok_or_else(|| not_found(ObjectKind::Collection, name))?;
        let owned = |d: &DeploymentSpec| d.collection.as_deref() == Some(name);
        self.deployments.retain(|_, d| !owned(&d.spec));
        let deployments = &self.deployments;
        self.replica_sets.retain(|d, _| deployments.contains_key(d));
        self.placements
            .retain(|_, p| deployments.contains_key(&p.deployment));
        Ok(CommandOutcome::Done)
    }

    /// Refuses to change a collection's partition deployment on its own.
    pub(super) fn not_owned(&self, deployment: &str) -> Result<(), Rejection> {
        match self
            .deployments
            .get(deployment)
            .and_then(|d| d.spec.collection.as_ref())
        {
            Some(c) => Err(Rejection::Invalid(format!(
                "deployment {deployment:?} belongs to collection {c:?}; change or delete the collection instead"
            ))),
            None => Ok(()),
        }
    }
}
