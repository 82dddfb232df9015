//! Audit benchmarks (placeholder).
fn main() {}
