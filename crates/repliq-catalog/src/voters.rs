//! Deterministic choice of the Raft voters among the members.

/// The voters among `names`: sorted by name, the first `min(largest odd ≤ n, 5)`.
///
/// Every node computes the same set from the same names; the rest are learners.
pub fn voters(names: &[String]) -> Vec<String> {
    let mut sorted: Vec<String> = names.to_vec();
    sorted.sort();
    sorted.dedup();
    let n = sorted.len();
    let k = if n == 0 {
        0
    } else if n % 2 == 1 {
        n.min(5)
    } else {
        (n - 1).min(5)
    };
    sorted.truncate(k);
    sorted
}

#[cfg(test)]
mod tests {
    use super::voters;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_odd_prefix_by_name() {
        assert!(voters(&[]).is_empty());
        assert_eq!(voters(&names(&["b"])), names(&["b"]));
        assert_eq!(voters(&names(&["b", "a"])), names(&["a"]));
        assert_eq!(voters(&names(&["c", "a", "b"])), names(&["a", "b", "c"]));
        assert_eq!(
            voters(&names(&["d", "c", "a", "b"])),
            names(&["a", "b", "c"])
        );
        assert_eq!(
            voters(&names(&["e", "d", "c", "a", "b", "f", "g"])),
            names(&["a", "b", "c", "d", "e"])
        );
        assert_eq!(voters(&names(&["a", "a", "b"])), names(&["a"]));
    }
}
