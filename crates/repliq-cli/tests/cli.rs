//! End-to-end tests of the `repliq` binary: every command, the output
//! formats, the exit codes and the error paths.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use repliq::store::{Store, StoreOptions};
use support::{signal, wait_exit, KillOnDrop, Sig, PATIENCE};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_repliq");

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "repliq-cli-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repliq(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("REPLIQ_LOG").stdin(Stdio::null());
    c
}

/// Runs with `args` and returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    out(repliq(args).output().unwrap())
}

fn run_stdin(args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut c = repliq(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    out(c.wait_with_output().unwrap())
}

fn out(o: Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Asserts success and returns stdout.
fn ok(args: &[&str]) -> String {
    let (code, stdout, stderr) = run(args);
    assert_eq!(code, 0, "{args:?} failed: {stderr}");
    stdout
}

/// Asserts exit `code` and a one-line `repliq: error:` message; returns it.
fn fails(args: &[&str], code: i32) -> String {
    let (c, _, stderr) = run(args);
    assert_eq!(
        c, code,
        "{args:?}: expected exit {code}, got {c}; stderr: {stderr}"
    );
    assert_one_line_error(&stderr);
    stderr
}

fn assert_one_line_error(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr:?}");
    assert!(lines[0].starts_with("repliq: error: "), "{stderr:?}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

fn new_queue(t: &TempDir, name: &str) -> PathBuf {
    let q = t.join(name);
    ok(&["create", p(&q), "--segment-size", "64K"]);
    q
}

/// The exit code of `c` once it exits after a signal. The bound only keeps
/// a process that ignores the signal from hanging the test.
fn exit_code_after_signal(c: &mut KillOnDrop, sig: Sig) -> Option<i32> {
    match wait_exit(c, PATIENCE) {
        Some(s) => s.code(),
        None => panic!("still running {PATIENCE:?} after SIG{sig:?}: the signal did not stop it"),
    }
}

/// Waits until `cond` holds of the queue at `q`, as another process sees it.
fn wait_for_queue(q: &Path, what: &str, mut cond: impl FnMut(&Store) -> bool) {
    let s = Store::open(q, &StoreOptions::open().skip_recovery()).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !cond(&s) {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; stats {:?}",
            s.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Readers asleep on the queue's shared futex.
fn sleeping_readers(s: &Store) -> u32 {
    s.sleeping_readers()
}

/// Messages the consumer group `group` has taken.
fn taken_by(s: &Store, group: &str) -> u64 {
    s.stats()
        .groups
        .iter()
        .find(|g| g.name == group)
        .map_or(0, |g| g.count)
}

fn flip_byte(file: &Path, off: usize) {
    let mut d = std::fs::read(file).unwrap();
    d[off] ^= 0xff;
    std::fs::write(file, d).unwrap();
}

fn seg0(q: &Path) -> PathBuf {
    q.join("00000000000000000000.seg")
}

#[test]
fn create_append_tail_round_trip_in_every_format() {
    let t = TempDir::new();
    let q = t.join("q");
    ok(&[
        "create",
        p(&q),
        "--capacity",
        "100",
        "--segment-size",
        "64K",
        "--durability",
        "none",
    ]);
    assert!(q.join("control.rq").exists());
    let ids = ok(&[
        "append",
        p(&q),
        "hello",
        "two words",
        "tab\there\\",
        "--print-ids",
    ]);
    assert_eq!(ids, "64\n88\n120\n");
    assert_eq!(ok(&["append", p(&q), "quiet"]), "");

    let text = ok(&["tail", p(&q)]);
    assert_eq!(
        text,
        "64 1 hello\n88 1 two words\n120 1 tab\\there\\\\\n152 1 quiet\n"
    );

    let hex = ok(&["tail", p(&q), "--format", "hex", "-n", "1"]);
    assert_eq!(hex, "64 1 68656c6c6f\n");

    let json = ok(&["tail", p(&q), "--format", "json", "--from", "88", "-n", "2"]);
    assert_eq!(
        json,
        "{\"id\":88,\"epoch\":1,\"len\":9,\"payload\":\"two words\"}\n\
         {\"id\":120,\"epoch\":1,\"len\":9,\"payload\":\"tab\\there\\\\\"}\n"
    );
    assert_eq!(ok(&["tail", p(&q), "--from", "end"]), "");
    assert_eq!(ok(&["tail", p(&q), "--from", "152"]), "152 1 quiet\n");

    // Binary payloads: escaped in text, base64 in JSON.
    let f = t.join("bin");
    std::fs::write(&f, b"\xff\x00ok\n").unwrap();
    let id = ok(&["append", p(&q), "--file", p(&f), "--print-ids"]);
    let id = id.trim();
    assert_eq!(
        ok(&["tail", p(&q), "--from", id]),
        format!("{id} 1 \\xff\\x00ok\\n\n")
    );
    assert_eq!(
        ok(&["tail", p(&q), "--from", id, "--format", "json"]),
        format!("{{\"id\":{id},\"epoch\":1,\"len\":5,\"payload\":null,\"payload_base64\":\"/wBvawo=\"}}\n")
    );
    assert_eq!(
        ok(&["tail", p(&q), "--from", id, "--format", "hex"]),
        format!("{id} 1 ff006f6b0a\n")
    );

    // Tailing does not consume.
    assert_eq!(ok(&["tail", p(&q)]).lines().count(), 5);
}

#[test]
fn append_from_stdin_lines_and_file() {
    let t = TempDir::new();
    let q = new_queue(&t, "q");
    let (c, ids, e) = run_stdin(
        &["append", p(&q), "--print-ids"],
        b"one\ntwo\r\n\nlast without newline",
    );
    assert_eq!(c, 0, "{e}");
    assert_eq!(ids.lines().count(), 4);
    assert_eq!(
        ok(&["tail", p(&q)])
            .lines()
            .map(|l| l.splitn(3, ' ').nth(2).unwrap_or("").to_string())
            .collect::<Vec<_>>(),
        ["one", "two", "", "last without newline"]
    );
    // A whole file, newlines included, is one message.
    let f = t.join("msg.txt");
    std::fs::write(&f, "line 1\nline 2\n").unwrap();
    ok(&["append", p(&q), "-F", p(&f)]);
    let last = ok(&["tail", p(&q), "--format", "json"])
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(
        last.contains("\"payload\":\"line 1\\nline 2\\n\""),
        "{last}"
    );
    // --file - reads standard input whole.
    let (c, _, e) = run_stdin(&["append", p(&q), "--file", "-"], b"a\nb");
    assert_eq!(c, 0, "{e}");
    assert!(ok(&["tail", p(&q)]).ends_with(" 1 a\\nb\n"));
    // A missing input file is an I/O error.
    fails(&["append", p(&q), "--file", p(&t.join("nope"))], 5);
    // Messages and --file conflict: usage.
    fails(&["append", p(&q), "x", "--file", p(&f)], 2);
}

#[test]
fn tail_follow_sees_appends_from_another_process_and_stops_on_sigint() {
    let t = TempDir::new();
    let q = new_queue(&t, "q");
    ok(&["append", p(&q), "before"]);
    let mut follower = KillOnDrop(
        repliq(&["tail", p(&q), "-f"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "64 1 before");
    ok(&["append", p(&q), "during 1", "during 2"]);
    assert!(lines.next().unwrap().unwrap().ends_with(" 1 during 1"));
    assert!(lines.next().unwrap().unwrap().ends_with(" 1 during 2"));
    signal(&mut follower, Sig::Int);
    assert_eq!(exit_code_after_signal(&mut follower, Sig::Int), Some(0));
    assert!(lines.next().is_none());

    // SIGTERM too, with a named tailer that resumes where it stopped.
    let mut named = KillOnDrop(
        repliq(&["tail", p(&q), "-f", "--named", "n1", "--format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(named.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        assert!(lines.next().unwrap().unwrap().starts_with("{\"id\":"));
    }
    signal(&mut named, Sig::Term);
    assert_eq!(exit_code_after_signal(&mut named, Sig::Term), Some(0));
    ok(&["append", p(&q), "after"]);
    assert!(ok(&["tail", p(&q), "--named", "n1"]).ends_with(" 1 after\n"));
    assert_eq!(ok(&["tail", p(&q), "--named", "n1"]), "");
}

#[test]
fn dequeue_groups_count_and_wait() {
    let t = TempDir::new();
    let q = new_queue(&t, "q");
    // Empty queue without --wait: nothing, exit 0.
    assert_eq!(ok(&["dequeue", p(&q)]), "");
    ok(&["append", p(&q), "m1", "m2", "m3"]);
    assert_eq!(ok(&["dequeue", p(&q)]), "64 1 m1\n");
    assert_eq!(ok(&["dequeue", p(&q), "-n", "5"]), "88 1 m2\n112 1 m3\n");
    assert_eq!(ok(&["dequeue", p(&q)]), "");
    // Another group sees every message once.
    assert_eq!(
        ok(&["dequeue", p(&q), "--group", "g", "-n", "2"])
            .lines()
            .count(),
        2
    );
    assert_eq!(
        ok(&["dequeue", p(&q), "-g", "g", "-n", "2", "--format", "json"]),
        "{\"id\":112,\"epoch\":1,\"len\":2,\"payload\":\"m3\"}\n"
    );
    let stat = ok(&["stat", p(&q), "--json"]);
    assert!(
        stat.contains("{\"name\":\"default\",\"position\":136,\"dequeued\":3}"),
        "{stat}"
    );
    assert!(
        stat.contains("{\"name\":\"g\",\"position\":136,\"dequeued\":3}"),
        "{stat}"
    );
    assert!(stat.contains("\"depth\":0"), "{stat}");

    // --wait blocks until COUNT messages were taken, fed by another process.
    assert_eq!(
        ok(&["dequeue", p(&q), "-g", "w", "-n", "3"])
            .lines()
            .count(),
        3
    );
    let mut waiter = KillOnDrop(
        repliq(&[
            "dequeue",
            p(&q),
            "--wait",
            "-n",
            "2",
            "-g",
            "w",
            "--timeout",
            "60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    // Append only once the waiter sleeps, and the second message only once
    // it took the first and sleeps again: each append wakes it.
    wait_for_queue(&q, "the waiter sleeps", |s| sleeping_readers(s) > 0);
    ok(&["append", p(&q), "w1"]);
    wait_for_queue(&q, "the waiter takes w1 and sleeps again", |s| {
        taken_by(s, "w") == 4 && sleeping_readers(s) > 0
    });
    ok(&["append", p(&q), "w2"]);
    let status = wait_exit(&mut waiter, PATIENCE).unwrap_or_else(|| {
        panic!("dequeue --wait -n 2 still running {PATIENCE:?} after both appends")
    });
    let (mut stdout, mut stderr) = (String::new(), String::new());
    waiter
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    waiter
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.ends_with(" 1 w1\n160 1 w2\n"), "{stdout}");

    // --wait --timeout with nothing to take: exit 8.
    let e = fails(
        &["dequeue", p(&q), "-g", "w", "--wait", "--timeout", "200ms"],
        8,
    );
    assert!(e.contains("timed out after taking 0 of 1"), "{e}");
    // SIGINT while waiting: exit 8 too.
    let mut c = KillOnDrop(
        repliq(&["dequeue", p(&q), "-g", "w", "--wait"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    signal(&mut c, Sig::Int);
    assert_eq!(exit_code_after_signal(&mut c, Sig::Int), Some(8));
    // -n 0 is a usage error; --timeout needs --wait.
    fails(&["dequeue", p(&q), "-n", "0"], 2);
    fails(&["dequeue", p(&q), "--timeout", "1s"], 2);
}

#[test]
fn dump_and_verify_clean_and_corrupt() {
    let t = TempDir::new();
    let q = new_queue(&t, "q");
    ok(&["append", p(&q), "aaaa", "bbbb", "cccc"]);
    ok(&["dequeue", p(&q), "-g", "grp"]);
    ok(&["tail", p(&q), "--named", "tl", "-n", "1"]);
    let (c, v, e) = run(&["verify", p(&q)]);
    assert_eq!(c, 0, "{e}");
    assert!(v.contains("ok: 3 records"), "{v}");

    let dump = ok(&["dump", p(&q)]);
    assert!(dump.contains("segment_size         65536"), "{dump}");
    assert!(
        dump.contains("group \"grp\" position=88 dequeued=1"),
        "{dump}"
    );
    assert!(dump.contains("named_tailer \"tl\" position=88"), "{dump}");
    assert!(dump.contains("segment 0 path="), "{dump}");
    assert!(
        dump.contains(
            "frame id=88 segment=0 offset=88 len=20 flags=0x0000 kind=data epoch=1 crc=ok"
        ),
        "{dump}"
    );
    assert!(
        dump.contains("end frames=3 records=3 bad=0 end=136 tail=136 stopped=empty"),
        "{dump}"
    );

    let json = ok(&["dump", p(&q), "--json"]);
    let lines: Vec<&str> = json.lines().collect();
    // The writer's prefetch thread may have created the next segment ahead.
    let segs = lines
        .iter()
        .filter(|l| l.starts_with("{\"type\":\"segment\""))
        .count();
    assert!((1..=2).contains(&segs), "{json}");
    assert_eq!(lines.len(), 1 + segs + 3 + 1, "{json}");
    assert!(lines[0].starts_with("{\"type\":\"control\""));
    for key in [
        "\"tail\":136",
        "\"committed\":",
        "\"reserved\":3",
        "\"depth\":3",
        "\"epoch\":1",
        "\"replicated\":0",
        "\"low_segment\":0",
        "\"full_rejections\":0",
        "\"sync_wait\":{\"samples\":0,",
        "\"unblocked\":0",
        "\"recoveries\":",
        "\"flushed\":",
        "\"named_tailers\":[{\"name\":\"tl\",\"position\":88}]",
    ] {
        assert!(lines[0].contains(key), "{key} missing in {}", lines[0]);
    }
    assert!(
        lines[1].starts_with("{\"type\":\"segment\",\"index\":0,"),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2 + segs],
        "{\"type\":\"frame\",\"id\":88,\"segment\":0,\"offset\":88,\"len\":20,\"flags\":0,\"kind\":\"data\",\"epoch\":1,\"crc\":\"ok\",\"problem\":null}"
    );
    assert_eq!(lines[4 + segs], "{\"type\":\"end\",\"frames\":3,\"records\":3,\"bad\":0,\"end\":136,\"tail\":136,\"stopped\":\"empty\"}");

    // Flip a payload byte of the middle record in a copy.
    let c = t.join("corrupt");
    std::fs::create_dir(&c).unwrap();
    for f in ["control.rq", "00000000000000000000.seg"] {
        std::fs::copy(q.join(f), c.join(f)).unwrap();
    }
    flip_byte(&seg0(&c), 88 + 16 + 1);
    let (code, stdout, stderr) = run(&["verify", p(&c)]);
    assert_eq!(code, 4, "{stderr}");
    assert_one_line_error(&stderr);
    assert!(stderr.contains("id 88"), "{stderr}");
    assert!(stdout.contains("bad id=88"), "{stdout}");
    // Verify changed nothing: still corrupt, and the last record is still there.
    assert_eq!(run(&["verify", p(&c)]).0, 4);
    let dump = ok(&["dump", p(&c)]);
    assert!(
        dump.contains(
            "frame id=88 segment=0 offset=88 len=20 flags=0x0000 kind=data epoch=1 crc=bad"
        ),
        "{dump}"
    );
    assert!(dump.contains("bad=1"), "{dump}");
    assert!(ok(&["dump", p(&c), "--json"]).contains("\"id\":88,\"segment\":0,\"offset\":88,\"len\":20,\"flags\":0,\"kind\":\"data\",\"epoch\":1,\"crc\":\"bad\""));
    // A reader stops at the damaged record with the corrupt code.
    let (code, stdout, stderr) = run(&["tail", p(&c)]);
    assert_eq!((code, stdout.as_str()), (4, "64 1 aaaa\n"), "{stderr}");

    // A damaged last record is reported too (not repaired away by verify).
    let c2 = t.join("corrupt-last");
    std::fs::create_dir(&c2).unwrap();
    for f in ["control.rq", "00000000000000000000.seg"] {
        std::fs::copy(q.join(f), c2.join(f)).unwrap();
    }
    flip_byte(&seg0(&c2), 112 + 16);
    assert!(fails(&["verify", p(&c2)], 4).contains("id 112"));

    // A damaged frame header.
    let c3 = t.join("corrupt-header");
    std::fs::create_dir(&c3).unwrap();
    for f in ["control.rq", "00000000000000000000.seg"] {
        std::fs::copy(q.join(f), c3.join(f)).unwrap();
    }
    flip_byte(&seg0(&c3), 88);
    assert!(fails(&["verify", p(&c3)], 4).contains("id 88"));
    assert!(ok(&["dump", p(&c3)]).contains("kind=corrupt"));
}

#[test]
fn stat_json_fields() {
    let t = TempDir::new();
    let q = t.join("q");
    ok(&[
        "create",
        p(&q),
        "--capacity",
        "1_000",
        "--segment-size",
        "4K",
        "--durability",
        "always",
    ]);
    for i in 0..100 {
        ok(&[
            "append",
            p(&q),
            &format!("message {i:03} with some padding to fill segments"),
        ]);
    }
    ok(&["dequeue", p(&q), "-n", "10"]);
    ok(&["tail", p(&q), "--named", "reader", "-n", "5"]);
    let s = ok(&["stat", p(&q), "--json"]);
    assert_eq!(s.lines().count(), 1);
    for key in [
        "\"dir\":",
        "\"durability\":\"always\"",
        "\"capacity\":1000",
        "\"segment_size\":4096",
        "\"depth\":90",
        "\"appended\":100",
        "\"first_id\":64",
        "\"tail\":",
        "\"committed\":",
        "\"flushed\":",
        "\"replicated\":0",
        "\"epoch\":1",
        "\"segments\":",
        "\"low_segment\":0",
        "\"full_rejections\":0",
        // Each `repliq append` process times its first append.
        "\"enqueue_latency\":{\"samples\":100,",
        "\"sync_wait\":{\"samples\":0,",
        "\"bytes_on_disk\":",
        "\"recoveries\":",
        "\"unblocked\":0",
        "\"groups\":[{\"name\":\"default\",\"position\":",
        "\"dequeued\":10}]",
        "\"named_tailers\":[{\"name\":\"reader\",\"position\":",
    ] {
        assert!(s.contains(key), "{key} missing in {s}");
    }
    let segs: u64 = s
        .split("\"segments\":")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(segs >= 2, "{s}");
    let text = ok(&["stat", p(&q)]);
    assert!(text.contains("depth          90"), "{text}");
    assert_eq!(ok(&["verify", p(&q), "-q"]), "");
}

#[test]
fn error_paths() {
    let t = TempDir::new();
    let missing = t.join("missing");
    // Missing queue: 3 for every reader, and nothing is created.
    for cmd in ["tail", "dequeue", "dump", "stat", "verify", "append"] {
        let mut args = vec![cmd, p(&missing)];
        if cmd == "append" {
            args.push("x");
        }
        let e = fails(&args, 3);
        assert!(e.contains("no queue here"), "{e}");
    }
    assert!(!missing.exists());
    // An existing directory without a queue: 3, and still no queue is created.
    let empty = t.join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails(&["stat", p(&empty)], 3);
    assert!(!empty.join("control.rq").exists());
    // A path that is a file.
    let file = t.join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(fails(&["tail", p(&file)], 3).contains("not a directory"));
    assert!(fails(&["create", p(&file)], 3).contains("not a directory"));
    // Bad arguments: clap's usage code, one line.
    let q = t.join("q");
    assert!(fails(&["create", p(&q), "--durability", "sometimes"], 2).contains("sometimes"));
    assert!(fails(&["create", p(&q), "--segment-size", "100000"], 2).contains("not a power of two"));
    assert!(fails(&["create", p(&q), "--segment-size", "2K"], 2).contains("out of range"));
    assert!(fails(&["create", p(&q), "--segment-size", "12Q"], 2).contains("unknown unit"));
    assert!(fails(&["create", p(&q), "--capacity", "0"], 2).contains("at least 1"));
    fails(&["create"], 2);
    fails(&["frobnicate"], 2);
    assert!(!q.exists());
    ok(&["create", p(&q), "--segment-size", "64K", "--capacity", "3"]);
    // Creating twice: 1 unless --exist-ok (then the options must match).
    assert!(fails(&["create", p(&q)], 1).contains("already exists"));
    ok(&["create", p(&q), "--exist-ok"]);
    assert!(fails(&["create", p(&q), "--exist-ok", "--capacity", "9"], 1).contains("capacity"));
    // Bad --from values.
    assert!(fails(&["tail", p(&q), "--from", "yesterday"], 2).contains("yesterday"));
    assert!(fails(&["tail", p(&q), "--from", "70"], 2).contains("id 70"));
    assert!(fails(&["tail", p(&q), "--from", "1"], 2).contains("id 1"));
    // Bad format / group names.
    fails(&["tail", p(&q), "--format", "xml"], 2);
    assert!(fails(&["dequeue", p(&q), "-g", &"x".repeat(100)], 2).contains("name"));
    // Message too large: 7.
    let big = t.join("big");
    std::fs::write(&big, vec![b'x'; 70_000]).unwrap();
    assert!(fails(&["append", p(&q), "--file", p(&big)], 7).contains("exceeds the maximum"));
    // Full: 6, with what was appended reported.
    let (c, ids, e) = run(&["append", p(&q), "1", "2", "3", "4", "--print-ids"]);
    assert_eq!(c, 6, "{e}");
    assert_one_line_error(&e);
    assert!(
        e.contains("queue is full") && e.contains("after appending 3"),
        "{e}"
    );
    assert_eq!(ids.lines().count(), 3);
    // Corrupt control magic: 4 for every command that opens the queue.
    std::fs::OpenOptions::new()
        .write(true)
        .open(q.join("control.rq"))
        .map(|f| {
            use std::os::unix::fs::FileExt;
            f.write_all_at(b"XXXXXXXX", 0).unwrap();
        })
        .unwrap();
    for cmd in ["verify", "dump", "stat", "tail", "dequeue"] {
        assert!(
            fails(&[cmd, p(&q)], 4).contains("not a repliq control file"),
            "{cmd}"
        );
    }
    fails(&["append", p(&q), "x"], 4);
    // A truncated segment: 4.
    let q2 = new_queue(&t, "q2");
    ok(&["append", p(&q2), "x"]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(seg0(&q2))
        .unwrap()
        .set_len(1000)
        .unwrap();
    fails(&["verify", p(&q2)], 4);
}

#[test]
fn completions_and_help() {
    let bash = ok(&["completions", "bash"]);
    assert!(bash.contains("repliq") && bash.lines().count() > 20);
    assert!(!ok(&["completions", "zsh"]).is_empty());
    fails(&["completions", "tcsh"], 2);
    let help = ok(&["--help"]);
    for cmd in [
        "create",
        "append",
        "tail",
        "dequeue",
        "dump",
        "stat",
        "verify",
        "completions",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
    assert!(ok(&["tail", "--help"]).contains("--follow"));
}

#[test]
fn broken_pipe_is_quiet() {
    let t = TempDir::new();
    let q = new_queue(&t, "q");
    let lines: Vec<u8> = (0..2000)
        .flat_map(|i| format!("message {i}\n").into_bytes())
        .collect();
    assert_eq!(run_stdin(&["append", p(&q)], &lines).0, 0);
    let mut c = repliq(&["tail", p(&q)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // stdout is closed now.
    let o = c.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
