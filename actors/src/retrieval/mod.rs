//! Retrieval over a collection: documents in (chunked, embedded in batches, routed by id hash
//! to partitions, written to every live replica of each), questions out (embedded, sent to one
//! replica of every partition with a timeout and a hedged second try, top-k merged).
//!
//! [`Coordinator`] is the library; the `retrieval_coordinator` actor kind wraps it, and any
//! node can use it directly. It reaches embedders and partitions through their deployments'
//! process groups, so it follows replicas as they move.
//!
//! A chunk is stored with its text and document in reserved metadata keys (`_doc`, `_chunk`,
//! `_text`, `_title`, and on chunk 0 `_chunks`, the document's chunk count, which lets an
//! ingest of a shorter version delete the chunks past its end); the document's own metadata
//! keys sit beside them, so filters name them directly
//! (`{"op": "equal", "key": "lang", "value": "en"}`).

pub mod chunk;
mod coordinator;
pub mod hedge;
pub mod messages;
pub mod route;

pub use chunk::ChunkPolicy;
pub use coordinator::{
    CollectionRoute, Coordinator, Document, IngestProgress, IngestReport, QueryAnswer, QueryHit,
    RagAnswer, RetrievalError, Shape, partition_deployment, rag_prompt,
};
pub use messages::{QueryInput, QueryRequest, RetrievalAnswer, RetrievalReply, RetrievalRequest};
