//! Rows to store, column by column: what an upsert carries from the gateway to a partition's
//! primary and on to its followers.
//!
//! One value per column instead of one per row: a bulk load moves every row through four
//! hops (gateway, coordinator, primary, follower), and as one `Vec<f32>` and one `String` per
//! row each hop made, copied, encoded and freed two heap blocks per row. In columns a batch of
//! rows is three blocks and its vectors cross the wire as one run of bytes.
//!
//! Every row has the batch's dimension, by construction: a ragged batch cannot be made, and
//! one that arrives from the wire is refused while it is decoded.

use serde::{Deserialize, Serialize};

use super::messages::VectorRecord;

/// Rows of one dimension: ids, vectors back to back, and metadata (JSON object text each,
/// `""` meaning `{}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Columns")]
pub struct Rows {
    dim: u32,
    ids: Vec<u64>,
    #[serde(with = "f32_bytes")]
    vectors: Vec<f32>,
    metadata: Vec<String>,
}

/// Why rows could not be put together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowsError {
    #[error("row {id}'s vector has {got} values; the rows with it have {dim}")]
    Ragged { id: u64, got: usize, dim: usize },
    #[error("{values} vector values are not {rows} rows of dimension {dim}")]
    Values {
        values: usize,
        rows: usize,
        dim: usize,
    },
    #[error("{got} metadata texts for {rows} rows")]
    Metadata { got: usize, rows: usize },
    #[error("a dimension of {0} is larger than any vector may have")]
    Dimension(usize),
}

impl Rows {
    /// No rows yet, of dimension `dim`.
    pub fn empty(dim: u32) -> Rows {
        Rows {
            dim,
            ..Rows::default()
        }
    }

    /// Rows from their columns: `vectors` is `ids.len() × dim` values, `metadata` one text
    /// per row.
    pub fn from_columns(
        dim: usize,
        ids: Vec<u64>,
        vectors: Vec<f32>,
        metadata: Vec<String>,
    ) -> Result<Rows, RowsError> {
        let dim32 = u32::try_from(dim).map_err(|_| RowsError::Dimension(dim))?;
        if vectors.len() != ids.len().saturating_mul(dim) {
            return Err(RowsError::Values {
                values: vectors.len(),
                rows: ids.len(),
                dim,
            });
        }
        if metadata.len() != ids.len() {
            return Err(RowsError::Metadata {
                got: metadata.len(),
                rows: ids.len(),
            });
        }
        Ok(Rows {
            dim: dim32,
            ids,
            vectors,
            metadata,
        })
    }

    /// Rows from records; their dimension is the first record's (0 when there are none).
    pub fn from_records(
        records: impl IntoIterator<Item = VectorRecord>,
    ) -> Result<Rows, RowsError> {
        let mut records = records.into_iter().peekable();
        let dim = records.peek().map_or(0, |r| r.vector.len());
        let dim = u32::try_from(dim).map_err(|_| RowsError::Dimension(dim))?;
        let mut rows = Rows::empty(dim);
        for r in records {
            rows.push(r.id, &r.vector, r.metadata)?;
        }
        Ok(rows)
    }

    /// Adds one row; refused (and nothing added) when its vector is not of the rows'
    /// dimension.
    pub fn push(&mut self, id: u64, vector: &[f32], metadata: String) -> Result<(), RowsError> {
        if vector.len() != self.dim() {
            return Err(RowsError::Ragged {
                id,
                got: vector.len(),
                dim: self.dim(),
            });
        }
        self.ids.push(id);
        self.vectors.extend_from_slice(vector);
        self.metadata.push(metadata);
        Ok(())
    }

    pub fn dim(&self) -> usize {
        self.dim as usize
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// Every row's vector, back to back.
    pub fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    pub fn metadata(&self) -> &[String] {
        &self.metadata
    }

    /// Row `i`'s vector.
    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim()..(i + 1) * self.dim()]
    }

    /// The rows `range` of these, as rows of their own.
    fn slice(&self, range: std::ops::Range<usize>) -> Rows {
        Rows {
            dim: self.dim,
            ids: self.ids[range.clone()].to_vec(),
            vectors: self.vectors[range.start * self.dim()..range.end * self.dim()].to_vec(),
            metadata: self.metadata[range].to_vec(),
        }
    }

    /// These rows in batches of at most `size` (`size` ≥ 1), in order.
    pub fn batches(&self, size: usize) -> impl Iterator<Item = Rows> + '_ {
        let size = size.max(1);
        (0..self.len())
            .step_by(size)
            .map(move |start| self.slice(start..(start + size).min(self.len())))
    }

    /// These rows split by `key` of their ids (a partition), each part in the order given.
    pub fn split_by<K: Ord>(self, key: impl Fn(u64) -> K) -> std::collections::BTreeMap<K, Rows> {
        let mut parts = std::collections::BTreeMap::new();
        let dim = self.dim;
        for (i, (id, metadata)) in self.ids.iter().zip(self.metadata).enumerate() {
            let part = parts.entry(key(*id)).or_insert_with(|| Rows::empty(dim));
            part.ids.push(*id);
            part.vectors
                .extend_from_slice(&self.vectors[i * dim as usize..(i + 1) * dim as usize]);
            part.metadata.push(metadata);
        }
        parts
    }
}

/// The rows as they are decoded, before [`Rows::from_columns`] checks that they fit together.
#[derive(Deserialize)]
struct Columns {
    dim: u32,
    ids: Vec<u64>,
    #[serde(with = "f32_bytes")]
    vectors: Vec<f32>,
    metadata: Vec<String>,
}

impl TryFrom<Columns> for Rows {
    type Error = RowsError;

    fn try_from(c: Columns) -> Result<Rows, RowsError> {
        Rows::from_columns(c.dim as usize, c.ids, c.vectors, c.metadata)
    }
}

/// Vectors as one run of little-endian bytes in binary formats (bincode), as a list of
/// numbers in human-readable ones.
pub(super) mod f32_bytes {
    use arbor_proto::f32le;
    use serde::de::{Error, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(values: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return values.serialize(serializer);
        }
        serializer.serialize_bytes(&f32le::to_bytes(values))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
        if deserializer.is_human_readable() {
            return Vec::<f32>::deserialize(deserializer);
        }
        deserializer.deserialize_bytes(BytesVisitor)
    }

    struct BytesVisitor;

    impl Visitor<'_> for BytesVisitor {
        type Value = Vec<f32>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("vector values as little-endian f32 bytes")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<f32>, E> {
            f32le::from_bytes(bytes).ok_or_else(|| {
                E::custom(format!(
                    "a vector of {} bytes, not a whole number of 4-byte components",
                    bytes.len()
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, vector: Vec<f32>, metadata: &str) -> VectorRecord {
        VectorRecord {
            id,
            vector,
            metadata: metadata.into(),
        }
    }

    #[test]
    fn records_make_rows_and_come_back_out() {
        let records = vec![
            record(3, vec![1.0, 2.0], r#"{"a":1}"#),
            record(1, vec![-0.5, 4.0], ""),
        ];
        let rows = Rows::from_records(records.clone()).unwrap();
        assert_eq!((rows.dim(), rows.len()), (2, 2));
        assert_eq!(rows.ids(), &[3, 1]);
        assert_eq!(rows.vector(1), &[-0.5, 4.0]);
        assert_eq!(rows.vectors(), &[1.0, 2.0, -0.5, 4.0]);
        assert_eq!(
            rows.metadata(),
            &[records[0].metadata.clone(), String::new()]
        );
        assert!(Rows::from_records(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn a_ragged_row_is_refused_by_its_id_and_nothing_is_added() {
        let err = Rows::from_records(vec![
            record(1, vec![1.0, 2.0], ""),
            record(9, vec![1.0], ""),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 9's vector has 1 values; the rows with it have 2"
        );
        let mut rows = Rows::empty(2);
        assert!(rows.push(4, &[1.0, 2.0, 3.0], String::new()).is_err());
        assert!(rows.is_empty() && rows.vectors().is_empty());
        assert!(Rows::from_columns(2, vec![1], vec![1.0], vec![String::new()]).is_err());
        assert!(Rows::from_columns(1, vec![1], vec![1.0], Vec::new()).is_err());
    }

    #[test]
    fn rows_split_and_batch_in_order() {
        let rows =
            Rows::from_records((0..7).map(|i| record(i, vec![i as f32], &i.to_string()))).unwrap();
        let parts = rows.clone().split_by(|id| id % 2);
        assert_eq!(parts[&0].ids(), &[0, 2, 4, 6]);
        assert_eq!(parts[&1].vectors(), &[1.0, 3.0, 5.0]);
        assert_eq!(parts[&1].metadata(), &["1", "3", "5"]);
        let batches: Vec<Rows> = rows.batches(3).collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[2].ids(), &[6]);
        assert_eq!(batches[1].vectors(), &[3.0, 4.0, 5.0]);
    }

    #[test]
    fn rows_travel_as_bytes_and_broken_ones_are_refused_while_decoded() {
        let rows = Rows::from_records(vec![
            record(7, vec![1.5, -0.25, f32::MIN_POSITIVE, 3.0e38], r#"{"a":1}"#),
            record(8, vec![0.0; 4], ""),
        ])
        .unwrap();
        let bytes = crate::wire::encode(&rows).unwrap();
        // dim, 2 ids, 32 bytes of vectors with their length, 2 texts with their lengths.
        assert_eq!(bytes.len(), 1 + (1 + 2) + (1 + 32) + (1 + 1 + 7 + 1));
        assert_eq!(crate::wire::decode::<Rows>(&bytes).unwrap(), rows);
        let json = serde_json::to_string(&rows).unwrap();
        assert!(json.contains(r#""vectors":[1.5,-0.25,"#), "{json}");
        assert_eq!(serde_json::from_str::<Rows>(&json).unwrap(), rows);

        // Claim a dimension of 3: 8 values are not 2 rows of it.
        let mut ragged = bytes.clone();
        ragged[0] = 3;
        let err = crate::wire::decode::<Rows>(&ragged).unwrap_err();
        assert!(
            err.to_string().contains("are not 2 rows of dimension 3"),
            "{err}"
        );
        // 31 bytes of vectors: not whole components.
        let mut broken = bytes;
        assert_eq!(broken[4], 32);
        broken[4] = 31;
        broken.remove(5);
        let err = crate::wire::decode::<Rows>(&broken).unwrap_err();
        assert!(
            err.to_string().contains("not a whole number of 4-byte"),
            "{err}"
        );
    }
}
