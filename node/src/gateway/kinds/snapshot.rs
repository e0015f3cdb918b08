//! `export` and `import` (a collection's rows, through one of its coordinators), `backup` and
//! `restore` (the control plane's definitions): what `arbor collection snapshot|restore` and
//! `arbor cluster backup|restore` are made of. The files themselves are the client's.

use super::*;
use arbor_actors::partition::{Rows, RowsError, VectorRecord};
use arbor_actors::retrieval::{RetrievalAnswer, RetrievalRequest};
use arbor_proto::snapshot::{
    ClusterBackup, ExportJob, ImportJob, Imported, PackedExportPage, RestoreJob, Restored,
    RowColumns,
};
use arbor_scheduler::state::DeploymentSpec;

use super::retrieval::ask_coordinator;

pub(super) async fn export(env: &Env, e: ExportJob) -> Result<Value, JobFailure> {
    let coordinator = coordinator_of(env, &e.collection).await?.coordinator;
    let request = RetrievalRequest::Export {
        partition: e.partition,
        from: e.from,
        limit: e.limit,
    };
    match ask_coordinator(env, &coordinator, request).await? {
        RetrievalAnswer::Exported(page) if e.packed => data(PackedExportPage::from(page)),
        RetrievalAnswer::Exported(page) => data(page),
        other => Err(internal(format!(
            "coordinator {coordinator:?} answered an export with {other:?}"
        ))),
    }
}

pub(super) async fn import(env: &Env, i: ImportJob) -> Result<Value, JobFailure> {
    let coordinator = coordinator_of(env, &i.collection).await?.coordinator;
    let ragged =
        |field: &str, e: RowsError| JobFailure::field(ErrorCode::InvalidJob, field, e.to_string());
    let mut rows = Rows::from_records(i.rows.into_iter().map(|r| VectorRecord {
        id: r.id,
        vector: r.vector,
        metadata: r.metadata,
    }))
    .map_err(|e| ragged("job.rows", e))?;
    if let Some(packed) = i.packed {
        let columns = packed
            .columns()
            .map_err(|e| JobFailure::field(ErrorCode::InvalidJob, "job.packed", e.to_string()))?;
        check_finite_packed(&columns)?;
        let RowColumns {
            ids,
            dimension,
            vectors,
            metadata,
        } = columns;
        if rows.is_empty() {
            rows = Rows::from_columns(dimension, ids, vectors, metadata)
                .map_err(|e| ragged("job.packed", e))?;
        } else {
            for ((id, vector), metadata) in
                ids.into_iter().zip(vectors.chunks(dimension)).zip(metadata)
            {
                rows.push(id, vector, metadata)
                    .map_err(|e| ragged("job.packed", e))?;
            }
        }
    }
    match ask_coordinator(env, &coordinator, RetrievalRequest::Import(rows)).await? {
        RetrievalAnswer::Imported(rows) => data(Imported {
            collection: i.collection,
            rows,
        }),
        other => Err(internal(format!(
            "coordinator {coordinator:?} answered an import with {other:?}"
        ))),
    }
}

/// The deployments users made (a collection's partition deployments are its own, made again
/// with it) and the collections, as the control plane stores them.
pub(super) async fn backup(env: &Env) -> Result<Value, JobFailure> {
    let (deployments, collections) = read(&env.raft, |s| {
        let deployments: Vec<DeploymentSpec> = s
            .deployments
            .values()
            .filter(|d| d.spec.collection.is_none())
            .map(|d| d.spec.clone())
            .collect();
        let collections: Vec<CollectionSpec> = s.collections.values().cloned().collect();
        (deployments, collections)
    })
    .await?;
    data(ClusterBackup {
        deployments: deployments.iter().map(data).collect::<Result<_, _>>()?,
        collections: collections.iter().map(data).collect::<Result<_, _>>()?,
    })
}

/// Makes a backup's deployments and collections, each after what it names. Every definition is read, and every name checked free, before anything is
/// made: a backup that does not fit is refused whole.
pub(super) async fn restore(env: &Env, r: RestoreJob) -> Result<Value, JobFailure> {
    let collections: Vec<CollectionSpec> = parse_all(r.collections, "collections")?;
    let deployments: Vec<DeploymentSpec> = parse_all(r.deployments, "deployments")?;
    if let Some(d) = deployments.iter().find(|d| d.collection.is_some()) {
        return Err(JobFailure::field(
            ErrorCode::InvalidJob,
            "job.deployments",
            format!(
                "deployment {:?} belongs to collection {:?}; a collection makes its partition \
                 deployments itself",
                d.name,
                d.collection.as_deref().unwrap_or_default()
            ),
        ));
    }
    let names: Vec<(bool, String)> = collections
        .iter()
        .map(|c| (true, c.name.clone()))
        .chain(deployments.iter().map(|d| (false, d.name.clone())))
        .collect();
    let taken = read(&env.raft, move |s| {
        names
            .into_iter()
            .filter(|(collection, name)| {
                if *collection {
                    s.collections.contains_key(name)
                } else {
                    s.deployments.contains_key(name)
                }
            })
            .map(|(_, name)| name)
            .collect::<Vec<_>>()
    })
    .await?;
    if !taken.is_empty() {
        return Err(JobFailure::new(
            ErrorCode::InvalidJob,
            format!(
                "this cluster already has {}; nothing was restored (delete them, or restore \
                 into another cluster)",
                taken
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut restored = Restored {
        deployments: Vec::new(),
        collections: Vec::new(),
    };
    // A collection names its embedder, which must exist first; a coordinator reads its
    // collection, which must exist first.
    let (coordinators, others): (Vec<_>, Vec<_>) = deployments
        .into_iter()
        .partition(|d| d.kind == "retrieval_coordinator");
    for d in others {
        let name = d.name.clone();
        control_request(&env.raft, ControlRequest::Deploy(d)).await?;
        restored.deployments.push(name);
    }
    for mut c in collections {
        // The control plane gives it an incarnation of this cluster's own.
        c.incarnation = 0;
        let name = c.name.clone();
        control_request(&env.raft, ControlRequest::CreateCollection(c)).await?;
        restored.collections.push(name);
    }
    for d in coordinators {
        let name = d.name.clone();
        control_request(&env.raft, ControlRequest::Deploy(d)).await?;
        restored.deployments.push(name);
    }
    data(restored)
}

/// Each definition of a backup's list, or which one is not one and why.
fn parse_all<T: serde::de::DeserializeOwned>(
    values: Vec<Value>,
    field: &str,
) -> Result<Vec<T>, JobFailure> {
    values
        .into_iter()
        .enumerate()
        .map(|(n, v)| {
            serde_json::from_value(v).map_err(|e| {
                JobFailure::field(
                    ErrorCode::InvalidJob,
                    &format!("job.{field}[{n}]"),
                    format!("{field}[{n}] is not a definition this cluster reads: {e}"),
                )
            })
        })
        .collect()
}
