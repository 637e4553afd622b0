//! `repliq cert`: a certificate authority and per-node certificates for
//! mutual TLS on the replication port (compose, tests, development). The
//! files are named as in a Kubernetes TLS Secret: `ca.crt`, `tls.crt`,
//! `tls.key`.

use std::path::{Path, PathBuf};

/// Arguments of `repliq cert`.
#[derive(clap::Args, Debug)]
pub struct CertArgs {
    #[command(subcommand)]
    what: CertCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CertCommand {
    /// A new certificate authority: DIR/ca.crt and DIR/ca.key (mode 0600).
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "repliq CA")]
        name: String,
        /// Replace an existing CA in DIR (every node certificate it signed
        /// stops being trusted by nodes given the new one).
        #[arg(long)]
        force: bool,
    },
    /// A node certificate signed by the CA in --ca, its SAN the node name
    /// (the `node.name` the daemon claims): DIR/tls.crt, DIR/tls.key
    /// (mode 0600) and a copy of the CA as DIR/ca.crt. Files are replaced
    /// atomically, so a running daemon picks a re-issued certificate up.
    Node {
        /// The node name (the certificate's first SAN and common name).
        name: String,
        /// Directory holding ca.crt and ca.key (from `repliq cert ca`).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// More DNS names for the certificate (repeatable).
        #[arg(long, value_name = "NAME")]
        san: Vec<String>,
    },
}

/// Runs `repliq cert` and returns the exit code.
pub fn run(a: CertArgs) -> i32 {
    match exec(a) {
        Ok(written) => {
            for p in written {
                println!("{}", p.display());
            }
            0
        }
        Err(e) => {
            eprintln!("repliq: error: cert: {e}");
            1
        }
    }
}

fn exec(a: CertArgs) -> Result<Vec<PathBuf>, String> {
    match a.what {
        CertCommand::Ca { out, name, force } => {
            let crt = out.join("ca.crt");
            let key = out.join("ca.key");
            if !force && (crt.exists() || key.exists()) {
                return Err(format!(
                    "{} already holds a CA (ca.crt or ca.key); pass --force to replace it",
                    out.display()
                ));
            }
            let (c, k) = repliq_node::tls::generate_ca(&name)?;
            mkdir(&out)?;
            write_atomic(&key, &k, true)?;
            write_atomic(&crt, &c, false)?;
            Ok(vec![crt, key])
        }
        CertCommand::Node { name, ca, out, san } => {
            let ca_crt = read(&ca.join("ca.crt"))?;
            let ca_key = read(&ca.join("ca.key"))?;
            let mut names = vec![name];
            for s in san {
                if !names.contains(&s) {
                    names.push(s);
                }
            }
            let (c, k) = repliq_node::tls::generate_node(&names, &ca_crt, &ca_key)?;
            mkdir(&out)?;
            let (crt, key, cacopy) = (out.join("tls.crt"), out.join("tls.key"), out.join("ca.crt"));
            // The key first: a daemon that sees the new certificate before
            // its key fails to load the pair and keeps the old one until
            // both are there.
            write_atomic(&key, &k, true)?;
            write_atomic(&crt, &c, false)?;
            if cacopy != ca.join("ca.crt") {
                write_atomic(&cacopy, &ca_crt, false)?;
            }
            Ok(vec![crt, key, cacopy])
        }
    }
}

fn mkdir(d: &Path) -> Result<(), String> {
    std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// Writes `text` to a temporary file beside `p`, then renames it over `p`.
fn write_atomic(p: &Path, text: &str, secret: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file_name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = p.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let err = |e: std::io::Error| format!("cannot write {}: {e}", p.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, p).map_err(err)
}
