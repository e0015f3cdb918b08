//! Arbor's compute kernels: similarity top-k (CPU and CUDA), the MiniLM encoder and the
//! SmolLM2 decoder on burn, and their tokenizers. Independent of the cluster.

pub mod device;
pub mod embed;
pub mod gguf;
pub mod hnsw;
mod isa;
pub mod llama;
pub mod models;
pub mod topk;

pub use device::{Device, GpuInfo, NoGpu};
