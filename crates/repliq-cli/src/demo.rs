//! `repliq demo`. (Filled in by the benchmark work.)

/// Arguments of `repliq demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

/// Runs the demo and returns the exit code.
pub fn run(_a: DemoArgs) -> i32 {
    eprintln!("repliq demo: not built yet");
    1
}
