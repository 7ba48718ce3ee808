//! `calm-train`: trains and evaluates CALM and its baselines on real data.
//!
//! - [`backend`]: the Burn backend (Flex, wgpu, CUDA) the reference executor runs on;
//! - [`backbone`]: all-MiniLM-L6-v2 (or a tiny random BERT), its tokenizer, and the states of a
//!   dataset's texts, computed once and cached;
//! - [`model`]: what is trained (CALM with ablations, or a baseline) as graphs;
//! - [`bench`]: the training step timed on each backend (`calm bench --train-step`);
//! - [`batch`]: samples as a graph's inputs; deterministic shuffles;
//! - [`optim`]: AdamW and the learning-rate schedule;
//! - [`resident`]: a run's weights and AdamW's moments kept on the backend between steps;
//! - [`checkpoint`]: weights, optimizer state and run state in one atomic file;
//! - [`trainer`]: the training loop and prediction on either executor;
//! - [`metrics`]: accuracy and macro-F1, overall and per culture;
//! - [`study`]: every variant and baseline over several seeds, as a table and a chart.

pub mod backbone;
pub mod backend;
pub mod batch;
pub mod bench;
pub mod checkpoint;
mod error;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod progress;
pub mod resident;
pub mod study;
pub mod trainer;

pub use error::TrainError;
