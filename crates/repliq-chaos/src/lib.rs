//! `repliq-chaos`: a Jepsen-style fault harness for repliq clusters.
//!
//! The binary starts a cluster of `repliq daemon` processes, each in its own
//! network namespace (or, with `run --compose`, in containers of the
//! product image), runs a workload through the founding API while
//! nemeses inject faults, records every operation in a [`history::History`],
//! and judges the history with [`checker::check`] against the nodes' final
//! logs. The checker is pure and tested on hand-made histories.

pub mod checker;
pub mod history;
pub mod prng;
