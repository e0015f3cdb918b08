//! Arbor's compute kernels: similarity top-k (CPU and CUDA), BERT sentence encoders and
//! Llama-family decoders (our own code on the CPU, burn on CUDA), and their tokenizers.
//! Independent of the cluster.

mod dense;
pub mod device;
pub mod embed;
pub mod gguf;
pub mod hnsw;
mod isa;
pub mod llama;
mod math;
pub mod models;
pub mod quant;
pub mod topk;

pub use device::{Device, GpuInfo, NoGpu};
