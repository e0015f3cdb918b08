//! Export and import: a partition's rows as its primary holds them, page by page, for a
//! snapshot; rows with their ids written back as they are, for a restore.

use arbor_proto::snapshot::{ExportFrom, ExportPage, ExportedRow, MAX_EXPORT_ROWS, RowData};

use super::*;
use crate::partition::Change;

impl Coordinator {
    /// One page of `partition`'s rows from its primary: the stored rows in id order, or the
    /// changes after a position (see `arbor_proto::snapshot`).
    pub async fn export(
        &self,
        partition: u32,
        from: ExportFrom,
        limit: u32,
    ) -> Result<ExportPage, RetrievalError> {
        let shape = self.shape()?;
        if partition >= shape.partitions {
            return Err(RetrievalError::Invalid(format!(
                "collection {:?} has partitions 0 to {}, not {partition}",
                self.route.collection,
                shape.partitions - 1
            )));
        }
        let limit = limit.clamp(1, MAX_EXPORT_ROWS);
        let request = move |_epoch| match from {
            ExportFrom::Rows { after } => PartitionRequest::Rows { after, limit },
            ExportFrom::Changes { after } => PartitionRequest::Changes { after, limit },
        };
        let invalid = |reason| RetrievalError::Read { partition, reason };
        let answer = self
            .ask_primary(partition, request, READ_TIMEOUT, invalid)
            .await?;
        let (changes, next, seq, history) = match answer {
            PartitionAnswer::Rows {
                rows,
                next,
                seq,
                history,
            } => (
                rows,
                next.map(|after| ExportFrom::Rows { after: Some(after) }),
                seq,
                history,
            ),
            PartitionAnswer::Changes {
                changes,
                next,
                seq,
                history,
            } => (
                changes,
                next.map(|after| ExportFrom::Changes { after }),
                seq,
                history,
            ),
            other => {
                return Err(RetrievalError::Read {
                    partition,
                    reason: format!("an export was answered with {}", answer_name(&other)),
                });
            }
        };
        Ok(ExportPage {
            rows: changes.into_iter().map(exported).collect(),
            next,
            seq,
            history,
        })
    }

    /// Writes rows as they are (ids, vectors and metadata text kept), each to the partition
    /// its id belongs to; returns once every row is durable on every in-sync replica.
    pub async fn import(&self, rows: Rows) -> Result<u64, RetrievalError> {
        let shape = self.shape()?;
        if !rows.is_empty() && rows.dim() != shape.dimension as usize {
            return Err(RetrievalError::Invalid(format!(
                "row {}: its vector has {} values; the collection's dimension is {}",
                rows.ids()[0],
                rows.dim(),
                shape.dimension
            )));
        }
        self.upsert(rows.split_by(|id| partition_of(id, shape.partitions)))
            .await
    }
}

fn exported(change: Change) -> ExportedRow {
    match change {
        Change::Row { seq, record } => ExportedRow {
            id: record.id,
            seq,
            row: Some(RowData {
                vector: record.vector,
                metadata: record.metadata,
            }),
        },
        Change::Gone { seq, id } => ExportedRow { id, seq, row: None },
    }
}
