//! The founding API, `RepliqQueue<T>`: ordering, capacity, configuration
//! errors, error mapping, replication settings, and the seed example run twice.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use repliq::store::{Durability, StoreError, StoreOptions};
use repliq::{PersistentQueue, Queue, QueueError, ReplicatedQueue, ReplicationMode, RepliqQueue};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
    price: f64,
}

fn order(i: u64) -> Order {
    Order {
        id: i,
        customer: format!("customer-{}", i % 7),
        lines: (0..(i % 4))
            .map(|k| (format!("sku-{k}"), k as u32 + 1))
            .collect(),
        note: (i % 3 == 0).then(|| "fragile".to_string()),
        price: i as f64 * 1.25,
    }
}

fn qpath(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

fn io_kind(e: &QueueError) -> Option<ErrorKind> {
    match e {
        QueueError::Io(io) => Some(io.kind()),
        _ => None,
    }
}

#[tokio::test]
async fn enqueue_dequeue_in_order_then_none() {
    let d = tempfile::tempdir().unwrap();
    let p = qpath(d.path(), "orders");
    let q = RepliqQueue::<Order>::new(&p, 1000).unwrap();
    assert_eq!(q.dequeue().await.unwrap(), None, "new queue is empty");
    for i in 0..200 {
        q.enqueue(order(i)).await.unwrap();
    }
    for i in 0..100 {
        assert_eq!(q.dequeue().await.unwrap(), Some(order(i)));
    }
    drop(q);
    // Persisted: a reopened queue (open and new with the same capacity) continues.
    let q = RepliqQueue::<Order>::open(&p).unwrap();
    for i in 100..150 {
        assert_eq!(q.dequeue().await.unwrap(), Some(order(i)));
    }
    drop(q);
    let q = RepliqQueue::<Order>::new(&p, 1000).unwrap();
    for i in 150..200 {
        assert_eq!(q.dequeue().await.unwrap(), Some(order(i)));
    }
    assert_eq!(q.dequeue().await.unwrap(), None);
    assert_eq!(q.dequeue().await.unwrap(), None, "still None, no error");
}

/// Uses the queue only through the founding traits.
async fn through_traits<Q: PersistentQueue<Order>>(path: &str) -> Result<Vec<Order>, QueueError> {
    let q = Q::new(path, 10)?;
    q.enqueue(order(1)).await?;
    q.enqueue(order(2)).await?;
    let mut out = Vec::new();
    while let Some(o) = Queue::dequeue(&q).await? {
        out.push(o);
    }
    Ok(out)
}

#[tokio::test]
async fn usable_through_the_founding_traits() {
    let d = tempfile::tempdir().unwrap();
    let got = through_traits::<RepliqQueue<Order>>(&qpath(d.path(), "t"))
        .await
        .unwrap();
    assert_eq!(got, vec![order(1), order(2)]);
}

#[tokio::test]
async fn full_at_capacity_and_nothing_dropped() {
    let d = tempfile::tempdir().unwrap();
    let p = qpath(d.path(), "small");
    let q = RepliqQueue::<Order>::new(&p, 5).unwrap();
    for i in 0..5 {
        q.enqueue(order(i)).await.unwrap();
    }
    for _ in 0..3 {
        assert!(matches!(q.enqueue(order(99)).await, Err(QueueError::Full)));
    }
    assert!(matches!(q.enqueue_bytes(b"raw"), Err(QueueError::Full)));
    assert_eq!(q.dequeue().await.unwrap(), Some(order(0)));
    q.enqueue(order(5)).await.unwrap();
    assert!(matches!(q.enqueue(order(99)).await, Err(QueueError::Full)));
    drop(q);
    // Capacity holds across a reopen, and nothing rejected was stored.
    let q = RepliqQueue::<Order>::new(&p, 5).unwrap();
    assert!(matches!(q.enqueue(order(99)).await, Err(QueueError::Full)));
    let mut got = Vec::new();
    while let Some(o) = q.dequeue().await.unwrap() {
        got.push(o.id);
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    for i in 6..11 {
        q.enqueue(order(i)).await.unwrap();
    }
    assert!(matches!(q.enqueue(order(99)).await, Err(QueueError::Full)));
}

#[test]
fn configuration_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = qpath(d.path(), "q");
    // Capacity zero.
    assert!(matches!(
        RepliqQueue::<Order>::new(&p, 0),
        Err(QueueError::InvalidConfig(_))
    ));
    assert!(!Path::new(&p).exists(), "a rejected new() creates nothing");
    // Existing queue, different capacity.
    drop(RepliqQueue::<Order>::new(&p, 100).unwrap());
    match RepliqQueue::<Order>::new(&p, 200) {
        Err(QueueError::InvalidConfig(m)) => {
            assert!(m.contains("capacity") && m.contains("100"), "{m}")
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    RepliqQueue::<Order>::new(&p, 100).expect("same capacity reopens");
    // Path is a regular file.
    let f = d.path().join("file");
    std::fs::write(&f, b"not a queue").unwrap();
    let e = RepliqQueue::<Order>::new(f.to_str().unwrap(), 10).unwrap_err();
    assert!(io_kind(&e).is_some(), "expected Io, got {e:?}");
    assert_eq!(io_kind(&e), Some(ErrorKind::NotADirectory), "{e}");
    let e = RepliqQueue::<Order>::open(f.to_str().unwrap()).unwrap_err();
    assert!(matches!(e, QueueError::Io(_)), "{e:?}");
    // Missing queue: open does not create it.
    let missing = qpath(d.path(), "missing");
    let e = RepliqQueue::<Order>::open(&missing).unwrap_err();
    assert_eq!(io_kind(&e), Some(ErrorKind::NotFound), "{e:?}");
    assert!(!Path::new(&missing).exists());
    // An empty directory is not a queue either.
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = RepliqQueue::<Order>::open(empty.to_str().unwrap()).unwrap_err();
    assert_eq!(io_kind(&e), Some(ErrorKind::NotFound), "{e:?}");
}

#[tokio::test]
async fn oversized_message_is_a_serialization_error() {
    let d = tempfile::tempdir().unwrap();
    let p = qpath(d.path(), "q");
    let opts = StoreOptions::create()
        .segment_size(4096)
        .durability(Durability::None);
    let q = RepliqQueue::<String>::with_options(&p, &opts).unwrap();
    let max = q.store().max_payload() as usize;
    q.enqueue_bytes(&vec![1u8; max])
        .expect("exactly the maximum fits");
    match q.enqueue_bytes(&vec![1u8; max + 1]) {
        Err(QueueError::Serialization(m)) => assert!(m.contains("exceeds"), "{m}"),
        other => panic!("expected Serialization, got {other:?}"),
    }
    match q.enqueue("x".repeat(5000)).await {
        Err(QueueError::Serialization(m)) => assert!(m.contains(&max.to_string()), "{m}"),
        other => panic!("expected Serialization, got {other:?}"),
    }
    // Nothing of the rejected items was stored; the queue goes on.
    q.enqueue("small".to_string()).await.unwrap();
    assert_eq!(q.dequeue_bytes().unwrap().map(|b| b.len()), Some(max));
    assert_eq!(q.dequeue().await.unwrap().as_deref(), Some("small"));
    assert_eq!(q.dequeue().await.unwrap(), None);
}

#[tokio::test]
async fn undecodable_payload_is_a_deserialization_error_and_is_consumed() {
    let d = tempfile::tempdir().unwrap();
    let p = qpath(d.path(), "q");
    let q = RepliqQueue::<Order>::new(&p, 100).unwrap();
    q.enqueue(order(1)).await.unwrap();
    let bad = q
        .enqueue_bytes(&[
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ])
        .unwrap();
    let empty = q.enqueue_bytes(&[]).unwrap();
    q.enqueue(order(2)).await.unwrap();
    assert_eq!(q.dequeue().await.unwrap(), Some(order(1)));
    match q.dequeue().await {
        Err(QueueError::Deserialization(m)) => {
            assert!(m.contains(&format!("message id {bad}")), "{m}")
        }
        other => panic!("expected Deserialization, got {other:?}"),
    }
    match q.dequeue().await {
        Err(QueueError::Deserialization(m)) => {
            assert!(m.contains(&format!("message id {empty}")), "{m}")
        }
        other => panic!("expected Deserialization, got {other:?}"),
    }
    assert_eq!(
        q.dequeue().await.unwrap(),
        Some(order(2)),
        "the bad items were consumed, not stuck"
    );
    assert_eq!(q.dequeue().await.unwrap(), None);
}

#[test]
fn with_replication_validates_node_names() {
    let d = tempfile::tempdir().unwrap();
    let mut q = RepliqQueue::<Order>::new(&qpath(d.path(), "q"), 10).unwrap();
    let bad: [(&str, Vec<&str>); 7] = [
        ("", vec!["b"]),
        ("a", vec![""]),
        ("a", vec!["b", "b"]),
        ("a", vec!["b", "a"]),
        ("a", vec!["a"]),
        ("a b", vec!["c"]),
        ("a", vec!["c\td"]),
    ];
    for (primary, secondaries) in bad {
        for mode in [ReplicationMode::Synchronous, ReplicationMode::Asynchronous] {
            let r = q.with_replication(primary, secondaries.clone(), mode);
            assert!(
                matches!(r, Err(QueueError::InvalidConfig(_))),
                "{primary:?} {secondaries:?}: {r:?}"
            );
            assert!(
                q.replication().is_none(),
                "rejected settings are not recorded"
            );
        }
    }
    let long = "n".repeat(254);
    assert!(matches!(
        q.with_replication(&long, vec![], ReplicationMode::Asynchronous),
        Err(QueueError::InvalidConfig(_))
    ));
    q.with_replication(
        "primary-node",
        vec!["secondary-1", "secondary-2"],
        ReplicationMode::Synchronous,
    )
    .unwrap();
    let r = q.replication().unwrap();
    assert_eq!(r.primary, "primary-node");
    assert_eq!(r.secondaries, vec!["secondary-1", "secondary-2"]);
    assert_eq!(r.mode, ReplicationMode::Synchronous);
    // No secondaries is valid too.
    q.with_replication("10.0.0.1:7000", vec![], ReplicationMode::Asynchronous)
        .unwrap();
    assert!(q.replication().unwrap().secondaries.is_empty());
}

// ---------------------------------------------------------------------------
// Read-only file system
// ---------------------------------------------------------------------------

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount(args: &[&str], target: &Path) -> Option<Mounted> {
    let out = Command::new("mount").args(args).arg(target).output().ok()?;
    if out.status.success() {
        Some(Mounted(target.to_path_buf()))
    } else {
        println!(
            "SKIPPED part of read_only_directory: mount {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        None
    }
}

fn assert_not_writable(e: &QueueError) {
    match e {
        QueueError::Io(io) => {
            assert_eq!(io.kind(), ErrorKind::PermissionDenied, "{io}");
            let inner = io.get_ref().and_then(|i| i.downcast_ref::<StoreError>());
            assert!(
                matches!(inner, Some(StoreError::NotWritable { .. })),
                "{inner:?}"
            );
            assert!(e.to_string().contains("not writable"), "{e}");
        }
        other => panic!("expected Io(PermissionDenied), got {other:?}"),
    }
}

#[tokio::test]
async fn read_only_directory_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    // 1. A read-only tmpfs: a new queue cannot be created in it.
    let ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    if let Some(_m) = mount(&["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"], &ro) {
        let e = RepliqQueue::<Order>::new(&qpath(&ro, "q"), 10).unwrap_err();
        assert_not_writable(&e);
    }
    // 2. An existing queue seen through a read-only bind mount.
    let src = d.path().join("src");
    {
        let q = RepliqQueue::<Order>::new(&qpath(&src, "q"), 10).unwrap();
        q.enqueue(order(1)).await.unwrap();
    }
    let view = d.path().join("view");
    std::fs::create_dir(&view).unwrap();
    if let Some(m) = mount(&["--bind", src.to_str().unwrap()], &view) {
        let remount = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&view)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if remount {
            let p = qpath(&view, "q");
            assert_not_writable(&RepliqQueue::<Order>::open(&p).unwrap_err());
            assert_not_writable(&RepliqQueue::<Order>::new(&p, 10).unwrap_err());
        } else {
            println!("SKIPPED part of read_only_directory: remount,bind,ro failed");
        }
        drop(m);
    }
    // The original is untouched and still works.
    let q = RepliqQueue::<Order>::open(&qpath(&src, "q")).unwrap();
    assert_eq!(q.dequeue().await.unwrap(), Some(order(1)));
}

// ---------------------------------------------------------------------------
// The seed example, twice in one directory
// ---------------------------------------------------------------------------

/// The logic of `examples/seed_usage.rs`, returning what it dequeued.
async fn seed_usage(path: &str) -> Result<Option<String>, QueueError> {
    let mut queue = RepliqQueue::<String>::new(path, 1024)?;
    queue.with_replication(
        "primary-node",
        vec!["secondary-node-1", "secondary-node-2"],
        ReplicationMode::Asynchronous,
    )?;
    queue.enqueue("Hello, repliq!".to_string()).await?;
    let got = queue.dequeue().await?;
    queue.enqueue("This might fail".to_string()).await?;
    Ok(got)
}

#[tokio::test]
async fn seed_example_runs_twice_in_the_same_directory() {
    let d = tempfile::tempdir().unwrap();
    let p = qpath(d.path(), "my_queue");
    let first = seed_usage(&p).await.unwrap();
    assert_eq!(first.as_deref(), Some("Hello, repliq!"));
    // The second run finds the item the first left behind.
    let second = seed_usage(&p).await.unwrap();
    assert_eq!(second.as_deref(), Some("This might fail"));
    let q = RepliqQueue::<String>::open(&p).unwrap();
    assert_eq!(
        q.dequeue().await.unwrap().as_deref(),
        Some("Hello, repliq!")
    );
    assert_eq!(
        q.dequeue().await.unwrap().as_deref(),
        Some("This might fail")
    );
    assert_eq!(q.dequeue().await.unwrap(), None);
}
