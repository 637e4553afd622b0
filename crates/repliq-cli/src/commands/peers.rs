//! `repliq peer-remove`: frees a replication peer's slot.

use std::path::PathBuf;

use super::exit::{CliError, CmdResult, NOT_FOUND, OK, OTHER};
use super::output::Out;

/// Arguments of `repliq peer-remove`.
#[derive(clap::Args, Debug)]
pub struct PeerRemoveArgs {
    /// Queue directory.
    pub dir: PathBuf,
    /// The peer's node name, as `repliq stat` lists it under `peers`.
    pub node: String,
    /// Remove it even while it is connected (its session then acknowledges
    /// into nothing until it reconnects).
    #[arg(long)]
    pub force: bool,
}

/// Removes the peer: it stops holding segments back from retention and its
/// slot is free again. A peer that comes back later starts over from the
/// oldest retained record.
pub fn remove(a: PeerRemoveArgs) -> CmdResult {
    let store = super::open_existing(&a.dir)?;
    match store.remove_peer(&a.node, a.force) {
        Ok(true) => {
            let mut out = Out::stdout();
            out.line(&format!("removed peer {}", a.node))?;
            out.flush()?;
            Ok(OK)
        }
        Ok(false) => Err(CliError::Coded {
            msg: format!(
                "{} has no replication peer named {:?}",
                a.dir.display(),
                a.node
            ),
            code: NOT_FOUND,
        }),
        // The peer is connected: refused, not a usage error.
        Err(e @ repliq::store::StoreError::InvalidConfig(_)) => Err(CliError::Coded {
            msg: format!("{e} (--force removes it anyway)"),
            code: OTHER,
        }),
        Err(e) => Err(CliError::Store(e)),
    }
}
