//! The role word in the control file, as other handles (other processes)
//! see it: a `changing` role holds appends until it settles.

use std::time::Duration;

use repliq::store::{Role, Store, StoreError, StoreOptions};

#[test]
fn an_append_during_a_role_change_waits_and_lands_once_the_role_turns_primary() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Store::open(dir.path().join("q"), &StoreOptions::create()).unwrap();
    daemon.set_role(Role::Changing);
    let writer = Store::open(dir.path().join("q"), &StoreOptions::open()).unwrap();
    let t = std::thread::spawn(move || writer.append(b"held"));
    // The writer is held: nothing lands while the word says changing. (The
    // hold is bounded at 2 s; the role settles well inside it.)
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(daemon.tail_position(), daemon.first_position());
    daemon.set_role(Role::Primary);
    let id = t.join().unwrap().expect("append after the role settled");
    assert_eq!(id, daemon.first_position());
}

#[test]
fn an_append_during_a_role_change_fails_as_a_replica_when_the_role_turns_secondary() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Store::open(dir.path().join("q"), &StoreOptions::create()).unwrap();
    daemon.set_role(Role::Changing);
    let writer = Store::open(dir.path().join("q"), &StoreOptions::open()).unwrap();
    let t = std::thread::spawn(move || writer.append(b"x"));
    std::thread::sleep(Duration::from_millis(50));
    daemon.set_role(Role::Secondary);
    match t.join().unwrap() {
        Err(StoreError::ReadOnly(m)) => assert!(m.contains("replica"), "{m}"),
        other => panic!("expected a replica's refusal, got {other:?}"),
    }
    assert_eq!(daemon.tail_position(), daemon.first_position());
}

#[test]
fn a_role_change_that_never_settles_fails_the_append_naming_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Store::open(dir.path().join("q"), &StoreOptions::create()).unwrap();
    daemon.set_role(Role::Changing);
    match daemon.append(b"x") {
        Err(StoreError::ReadOnly(m)) => assert!(m.contains("role changing"), "{m}"),
        other => panic!("expected a bounded wait then a refusal, got {other:?}"),
    }
    assert_eq!(daemon.tail_position(), daemon.first_position());
    assert_eq!(daemon.role(), Role::Changing);
}

#[test]
fn a_primary_whose_lease_ran_out_holds_appends_in_every_handle_until_it_is_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Store::open(dir.path().join("q"), &StoreOptions::create()).unwrap();
    daemon.set_role(Role::Primary);
    daemon.set_lease_until(repliq::store::monotonic_now_ns() + 60_000_000_000);
    let writer = Store::open(dir.path().join("q"), &StoreOptions::open()).unwrap();
    writer.append(b"within the lease").unwrap();
    let tail = daemon.tail_position();
    // The daemon stops renewing: the deadline passes.
    daemon.set_lease_until(1);
    assert!(!writer.takes_appends());
    let t = std::thread::spawn(move || writer.append(b"held"));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(daemon.tail_position(), tail, "nothing lands past the lease");
    daemon.set_lease_until(repliq::store::monotonic_now_ns() + 60_000_000_000);
    t.join()
        .unwrap()
        .expect("append once the lease was renewed");
}

#[test]
fn a_lease_that_is_never_renewed_fails_the_append_naming_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("q"), &StoreOptions::create()).unwrap();
    s.set_role(Role::Primary);
    s.set_lease_until(1);
    match s.append(b"x") {
        Err(StoreError::ReadOnly(m)) => assert!(m.contains("lease"), "{m}"),
        other => panic!("expected a refusal naming the lease, got {other:?}"),
    }
    // No lease word (0): a static primary takes appends.
    s.set_lease_until(0);
    s.append(b"x").unwrap();
}
