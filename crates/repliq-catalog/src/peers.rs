//! The members a node knows of before (and besides) the catalog: a fixed list, or what
//! discovery (DNS, Kubernetes) finds as it runs.

use tokio::sync::watch;

/// The members discovery knows of, as a catalog node reads them to find the catalog's
/// leader and to decide whether it may initialize the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    /// `(name, addr)` of every member found so far (this node may be missing: it is
    /// added).
    pub members: Vec<(String, String)>,
    /// True when `members` is the whole expected membership (for example as many
    /// members as the DaemonSet wants). Only then may the first voter by name
    /// initialize a fresh cluster: with a partial view two nodes could each believe
    /// they come first and initialize two clusters.
    pub complete: bool,
}

/// This node's view of the members, kept current by whoever holds the sender.
#[derive(Debug, Clone)]
pub(crate) struct Peers {
    rx: watch::Receiver<Discovered>,
    me: (String, String),
    /// Found by discovery (addresses may change, e.g. pod IPs after a restart),
    /// not a fixed list.
    discovered: bool,
}

impl Peers {
    pub(crate) fn new(rx: watch::Receiver<Discovered>, name: &str, addr: &str) -> Peers {
        Peers {
            rx,
            me: (name.to_string(), addr.to_string()),
            discovered: true,
        }
    }

    /// A fixed list, complete.
    pub(crate) fn fixed(members: Vec<(String, String)>, name: &str, addr: &str) -> Peers {
        let (_tx, rx) = watch::channel(Discovered {
            members,
            complete: true,
        });
        // The sender is dropped: the receiver keeps the value for good.
        let mut p = Peers::new(rx, name, addr);
        p.discovered = false;
        p
    }

    /// The address discovery currently gives the member `name`, if the members are
    /// discovered and it is among them. It replaces the address recorded in the Raft
    /// membership, which is the one the member had when it joined: a member that came
    /// back elsewhere (a pod recreated with a new IP) is reached where it is now.
    pub(crate) fn addr_of(&self, name: &str) -> Option<String> {
        if !self.discovered {
            return None;
        }
        if name == self.me.0 {
            return Some(self.me.1.clone());
        }
        self.rx
            .borrow()
            .members
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
    }

    /// The members now, this node included (with its own address), sorted by name.
    pub(crate) fn list(&self) -> Vec<(String, String)> {
        let d = self.rx.borrow();
        let mut v: Vec<(String, String)> = d
            .members
            .iter()
            .filter(|(n, _)| *n != self.me.0)
            .cloned()
            .collect();
        v.push(self.me.clone());
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        v
    }

    /// Whether the current view is the whole expected membership.
    pub(crate) fn complete(&self) -> bool {
        self.rx.borrow().complete
    }

    /// Waits until the view changes (or `max` passes, or the sender is gone).
    pub(crate) async fn changed_or(&mut self, max: std::time::Duration) {
        let _ = tokio::time::timeout(max, self.rx.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_holds_this_node_once_with_its_own_address() {
        let (tx, rx) = watch::channel(Discovered::default());
        let p = Peers::new(rx, "b", "10.0.0.2:1");
        assert_eq!(p.list(), [("b".to_string(), "10.0.0.2:1".to_string())]);
        assert!(!p.complete());
        tx.send_replace(Discovered {
            members: vec![
                ("c".into(), "10.0.0.3:1".into()),
                ("b".into(), "elsewhere:1".into()),
                ("a".into(), "10.0.0.1:1".into()),
            ],
            complete: true,
        });
        let names: Vec<(String, String)> = p.list();
        assert_eq!(
            names,
            [
                ("a".to_string(), "10.0.0.1:1".to_string()),
                ("b".to_string(), "10.0.0.2:1".to_string()),
                ("c".to_string(), "10.0.0.3:1".to_string())
            ]
        );
        assert!(p.complete());
        assert_eq!(p.addr_of("c").as_deref(), Some("10.0.0.3:1"));
        assert_eq!(p.addr_of("b").as_deref(), Some("10.0.0.2:1"));
        assert_eq!(p.addr_of("z"), None);
        let fixed = Peers::fixed(vec![("a".into(), "x:1".into())], "a", "x:1");
        assert!(fixed.complete());
        assert_eq!(fixed.list().len(), 1);
        assert_eq!(
            fixed.addr_of("a"),
            None,
            "a fixed list keeps the recorded addresses"
        );
    }
}
