//! `calm-fuzz`: fuzzing calm's readers and its compiler.
//!
//! - [`targets`]: one target per reader (graph JSON and verifier, safetensors, CREHate, tables,
//!   configs): bytes in, a value or a typed error out, never a panic;
//! - [`mutate`] and [`campaign`]: a mutation fuzzer over [`seeds`] and saved regressions, run
//!   for a bounded time by the tests (stable Rust, in CI) and for longer by the `calm-fuzz`
//!   binary; `fuzz/libfuzzer` runs the same targets under cargo-fuzz where nightly exists;
//! - [`graphs`]: random valid graphs from the op set, which must compile and match the
//!   reference executor on the device, or be refused with a typed error.
//!
//! `docs/robustness.md` records what was fuzzed, for how long, and what was found.

pub mod campaign;
#[cfg(feature = "runtime")]
pub mod graphs;
pub mod mutate;
pub mod seeds;
pub mod targets;
