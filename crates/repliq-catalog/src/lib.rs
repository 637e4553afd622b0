#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod catalog;
pub mod command;
pub mod error;
mod forward;
mod membership;
pub mod network;
pub mod peers;
pub mod server;
pub mod state;
pub mod storage;
pub mod types;
pub mod voters;
pub mod wire;

pub use catalog::{Catalog, CatalogConfig, CatalogMetrics};
pub use command::{Command, Durability, QueueSettings, Rejection, ReplicationMode, Response};
pub use error::{CatalogError, StoreError, WireError};
pub use forward::FORWARD_DEADLINE;
pub use peers::Discovered;
pub use server::{listen, serve_connection, serve_connection_checked, PeerCheck, ServerContext};
pub use state::{CatalogState, Member, Progress, QueueEntry};
pub use types::node_id;
pub use voters::voters;
