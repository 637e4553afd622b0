//! Queue commands: create, append, tail, dequeue, dump, stat, verify, completions.
//! (Filled in by the CLI work.)

/// The queue subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum QueueCommand {}

/// Runs a queue subcommand and returns the process exit code.
pub fn run(c: QueueCommand) -> i32 {
    match c {}
}
