//! `repliq create`.

use std::path::PathBuf;

use repliq::store::{Durability, Store, StoreOptions};

use super::args;
use super::exit::{CliError, CmdResult, OK};

/// Arguments of `repliq create`.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Queue directory to create (parents are created too).
    pub dir: PathBuf,
    /// Capacity in messages: appends fail with "queue is full" (exit 6) when
    /// the default group holds this many undequeued messages. Default 1000000.
    #[arg(long, value_parser = args::parse_capacity)]
    pub capacity: Option<u64>,
    /// Segment file size: a power of two from 4K to 1G (65536, 64K, 64M, 1G). Default 64M.
    #[arg(long, value_parser = args::parse_segment_size)]
    pub segment_size: Option<u64>,
    /// Durability: none (page cache), batch (background msync, default) or
    /// always (msync on every append).
    #[arg(long, value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// Succeed if the queue already exists (its configuration must match the
    /// options given).
    #[arg(long)]
    pub exist_ok: bool,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    s.parse()
}

pub fn run(a: CreateArgs) -> CmdResult {
    let ctl = a.dir.join(repliq::store::layout::CONTROL_FILE);
    let existed = ctl.exists();
    if existed && !a.exist_ok {
        return Err(CliError::Other(format!(
            "{}: a queue already exists here (use --exist-ok to accept it)",
            a.dir.display()
        )));
    }
    let mut o = StoreOptions::create();
    if let Some(c) = a.capacity {
        o = o.capacity(c);
    }
    if let Some(s) = a.segment_size {
        o = o.segment_size(s);
    }
    if let Some(d) = a.durability {
        o = o.durability(d);
    }
    Store::open(&a.dir, &o)?;
    Ok(OK)
}
