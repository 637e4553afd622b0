//! `repliq bench`. (Filled in by the benchmark work.)

/// Arguments of `repliq bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Runs a benchmark and returns the exit code.
pub fn run(_a: BenchArgs) -> i32 {
    eprintln!("repliq bench: not built yet");
    1
}
