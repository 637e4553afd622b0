//! The checker: judges a [`History`] from the recorded operations and the
//! nodes' final logs alone (the nodes' own counters are never read).
//!
//! Anomaly classes, each reported with every instance found:
//!
//! * **lost**: a sync enqueue acknowledged `ok` whose value is absent from
//!   the final log of the queue's primary (in cluster mode its final leader)
//!   or of one of its in-sync replicas (a replica holding every id the
//!   primary holds, or one the final catalog lists as in sync).
//! * **duplicated**: a value twice in one node's log, or dequeued twice in
//!   one consumer group by one leadership (the same node under the same
//!   term: a tailer, a static-primary reader), or taken again after a
//!   leadership change although its first take was older than the
//!   redelivery window before that change.
//! * **redelivered** (not a failure): a value taken again in one group
//!   after a leadership change (another node, or the same node under a new
//!   term) whose first take happened at most the redelivery window before
//!   the old leadership's last take: the group cursor the old leader had not
//!   yet shipped. A count and the largest window.
//! * **group lost**: a sync enqueue acknowledged `ok` that a consumer group
//!   (not a tailer) never took, after the final drain.
//! * **unexpected**: a record whose payload is not a value any client
//!   invoked on that queue, or whose enqueue definitely failed.
//! * **divergent**: two nodes holding different records (payload or epoch)
//!   at the same id, a replica holding a record at an id the primary's log
//!   lacks, or a log whose epochs go backwards.
//! * **order**: one client's acknowledged values out of order in the
//!   primary's log.
//! * **split-brain**: two nodes accepting appends for one queue at
//!   overlapping times.
//! * **async**: acknowledged async values absent from the primary's log:
//!   a count and a bound, never a pass and never a failure.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::history::{decode_value, EventType, History, LogRecord, Mode, OpFn, TAIL_GROUP_PREFIX};

/// Gap (ns) below which two acknowledged appends on one node count as one
/// acceptance window for the split-brain check.
pub const WINDOW_GAP_NS: u64 = 1_000_000_000;

/// Default redelivery window (ns): how long before a leadership change a
/// value may have been taken and still be taken again on the new leader.
///
/// From the code: a cluster leader's lease is half the failover timeout
/// (`repliq-node` `cluster/mod.rs`: `Lease::new(failover / 2)`, 1250 ms for
/// the harness's 2500 ms), and a reader keeps taking until that lease runs
/// out even while its daemon is stopped or cut off; the group table last
/// reached the followers at most one heartbeat before that (shipped at most
/// once per `replication.heartbeat_ms`: 200 ms in the harness, 500 ms by
/// default). 1250 + 500 + 250 ms of scheduling slack = 2 s.
pub const DEFAULT_REDELIVERY_WINDOW_NS: u64 = 2_000_000_000;

/// The redelivery window for a failover timeout: half of it (the lease),
/// plus a default heartbeat (500 ms), plus 250 ms of slack.
pub fn redelivery_window_ns(failover_timeout_ms: u64) -> u64 {
    (failover_timeout_ms / 2 + 750).saturating_mul(1_000_000)
}

/// What the checker is told besides the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// See [`DEFAULT_REDELIVERY_WINDOW_NS`].
    pub redelivery_window_ns: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            redelivery_window_ns: DEFAULT_REDELIVERY_WINDOW_NS,
        }
    }
}

/// A value a consumer group took again after a leadership change, within
/// the redelivery window: at-least-once, not a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redelivered {
    /// Queue.
    pub queue: String,
    /// Group.
    pub group: String,
    /// Value.
    pub value: u64,
    /// Node of the earlier take.
    pub first_node: String,
    /// Node of the later take.
    pub again_node: String,
    /// From the earlier take to the last take of its leadership (ns).
    pub window_ns: u64,
}

/// An acknowledged sync value a consumer group never took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupLost {
    /// Queue.
    pub queue: String,
    /// Group.
    pub group: String,
    /// Value.
    pub value: u64,
}

/// What one consumer group took.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupStats {
    /// Queue.
    pub queue: String,
    /// Group.
    pub group: String,
    /// Takes recorded.
    pub taken: u64,
    /// Distinct values taken.
    pub distinct: u64,
    /// Leaderships (runs of takes by one node under one term).
    pub leaderships: u64,
    /// Takes classed redelivered.
    pub redelivered: u64,
    /// Largest redelivery window (ns).
    pub max_window_ns: u64,
    /// Acknowledged sync values never taken.
    pub lost: u64,
}

/// Counts of enqueue outcomes for one mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    /// Acknowledged.
    pub ok: u64,
    /// Definitely failed.
    pub fail: u64,
    /// Unknown outcome (timeouts, a client killed mid-call).
    pub info: u64,
}

/// A sync value acknowledged and then lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// Queue.
    pub queue: String,
    /// Value.
    pub value: u64,
    /// Nodes (primary or in-sync replicas) whose final log lacks it.
    pub missing_on: Vec<String>,
}

/// A value seen more than once where it must be seen once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    /// Queue.
    pub queue: String,
    /// `log:<node>` or `group:<name>`.
    pub r#where: String,
    /// Value.
    pub value: u64,
    /// Times seen.
    pub count: u64,
}

/// A record nobody asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unexpected {
    /// Queue.
    pub queue: String,
    /// Node whose log holds it.
    pub node: String,
    /// Its id.
    pub id: u64,
    /// Its value, if the payload decodes.
    pub value: Option<u64>,
    /// Why it is unexpected.
    pub reason: String,
}

/// Two logs disagreeing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// Queue.
    pub queue: String,
    /// The id where they disagree.
    pub id: u64,
    /// What each node holds there: `node: epoch e, value v`.
    pub detail: Vec<String>,
}

/// A client's acknowledged values out of order in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderViolation {
    /// Queue.
    pub queue: String,
    /// Client process.
    pub process: u64,
    /// Acknowledged first, but found later in the log.
    pub first: u64,
    /// Acknowledged second, but found earlier in the log.
    pub second: u64,
}

/// Two nodes accepting appends to one queue at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitBrain {
    /// Queue.
    pub queue: String,
    /// The two nodes.
    pub nodes: (String, String),
    /// Overlap start, ns.
    pub start_ns: u64,
    /// Overlap end, ns.
    pub end_ns: u64,
}

/// Acknowledged async values absent from the primary's final log.
///
/// An async leader acknowledges a value once it is in its own log; what it
/// had acknowledged and not yet shipped when it lost leadership is lost. So
/// losses are grouped by the epoch (of one queue) that acknowledged them, and
/// the bound is per epoch: how many, and how long before that epoch's last
/// acknowledgement the earliest of them was acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AsyncLoss {
    /// Async enqueues acknowledged.
    pub acknowledged: u64,
    /// Of those, absent from the primary's final log.
    pub lost: u64,
    /// Epochs (counted per queue) that lost at least one acknowledged value.
    pub epochs: u64,
    /// Bound: the most values lost from one epoch of one queue.
    pub max_per_epoch: u64,
    /// Bound: over the epochs that lost values, the longest time from the
    /// earliest lost acknowledgement to the epoch's last acknowledgement
    /// (ns): every lost value was acknowledged at most this long before its
    /// leader's last.
    pub window_ns: u64,
}

/// The checker's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Sync enqueue outcomes.
    pub sync: Outcomes,
    /// Async enqueue outcomes.
    pub r#async: Outcomes,
    /// Values dequeued.
    pub dequeued: u64,
    /// Lost sync acknowledgements.
    pub lost: Vec<Lost>,
    /// Duplicates in a log or a group.
    pub duplicated: Vec<Duplicate>,
    /// Records never invoked (or definitely failed).
    pub unexpected: Vec<Unexpected>,
    /// Logs disagreeing.
    pub divergent: Vec<Divergence>,
    /// Per-client order violations.
    pub order: Vec<OrderViolation>,
    /// Split-brain windows.
    pub split_brain: Vec<SplitBrain>,
    /// Async losses (informational, never a pass).
    pub async_loss: AsyncLoss,
    /// The redelivery window the groups were judged with (ns).
    pub redelivery_window_ns: u64,
    /// Values taken again after a leadership change, within the window.
    pub redelivered: Vec<Redelivered>,
    /// Acknowledged sync values a consumer group never took.
    pub group_lost: Vec<GroupLost>,
    /// Per consumer group (tailers excluded): takes and redeliveries.
    pub groups: Vec<GroupStats>,
    /// Replicas not holding every id of the primary after the drain.
    pub lagging: Vec<String>,
    /// Logs that could not be read (a failure: nothing can be checked).
    pub unreadable: Vec<String>,
}

impl Report {
    /// True if no safety anomaly was found. Async losses and lagging
    /// replicas are reported but do not decide the verdict.
    pub fn pass(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.divergent.is_empty()
            && self.order.is_empty()
            && self.split_brain.is_empty()
            && self.unreadable.is_empty()
            && self.group_lost.is_empty()
    }
}

/// An enqueue paired from its events.
#[derive(Debug, Clone)]
struct Enq {
    process: u64,
    node: String,
    queue: String,
    mode: Mode,
    value: u64,
    invoke_ns: u64,
    outcome: EventType,
    complete_ns: u64,
    /// The epoch the completion returned, if any.
    epoch: Option<u32>,
}

/// Async acknowledgements of one epoch of one queue.
struct EpochLoss {
    lost: u64,
    first_lost_ns: u64,
    last_ack_ns: u64,
}

impl Default for EpochLoss {
    fn default() -> EpochLoss {
        EpochLoss {
            lost: 0,
            first_lost_ns: u64::MAX,
            last_ack_ns: 0,
        }
    }
}

/// Pairs invokes with completions; an invoke without one is `info`.
fn enqueues(h: &History) -> Vec<Enq> {
    let mut open: HashMap<(u64, u64), usize> = HashMap::new();
    let mut out: Vec<Enq> = Vec::new();
    for e in h.events.iter().filter(|e| e.f == OpFn::Enqueue) {
        match e.kind {
            EventType::Invoke => {
                open.insert((e.process, e.value), out.len());
                out.push(Enq {
                    process: e.process,
                    node: e.node.clone(),
                    queue: e.queue.clone(),
                    mode: e.mode,
                    value: e.value,
                    invoke_ns: e.time_ns,
                    outcome: EventType::Info,
                    complete_ns: u64::MAX,
                    epoch: None,
                });
            }
            k => {
                if let Some(i) = open.remove(&(e.process, e.value)) {
                    out[i].outcome = k;
                    out[i].complete_ns = e.time_ns;
                    out[i].epoch = e.epoch;
                }
            }
        }
    }
    out
}

/// Checks a history with the default options. Pure: the same history gives
/// the same report.
pub fn check(h: &History) -> Report {
    check_with(h, &CheckOptions::default())
}

/// Checks a history. Pure: the same history and options give the same
/// report.
pub fn check_with(h: &History, opts: &CheckOptions) -> Report {
    let mut r = Report {
        redelivery_window_ns: opts.redelivery_window_ns,
        ..Report::default()
    };
    let ops = enqueues(h);
    for o in &ops {
        let c = match o.mode {
            Mode::Sync => &mut r.sync,
            Mode::Async => &mut r.r#async,
        };
        match o.outcome {
            EventType::Ok => c.ok += 1,
            EventType::Fail => c.fail += 1,
            _ => c.info += 1,
        }
    }
    // Values invoked per queue, and those that definitely failed.
    let mut invoked: HashMap<&str, HashMap<u64, EventType>> = HashMap::new();
    for o in &ops {
        invoked
            .entry(o.queue.as_str())
            .or_default()
            .insert(o.value, o.outcome);
    }
    let queues: BTreeSet<&str> = h
        .logs
        .iter()
        .map(|l| l.queue.as_str())
        .chain(ops.iter().map(|o| o.queue.as_str()))
        .collect();

    for l in &h.logs {
        if l.records.is_none() {
            r.unreadable.push(format!(
                "{} on {}: {}",
                l.queue,
                l.node,
                l.error.as_deref().unwrap_or("unreadable")
            ));
        }
    }

    for q in queues {
        let logs: Vec<(&str, bool, &Vec<LogRecord>)> = h
            .logs
            .iter()
            .filter(|l| l.queue == q)
            .filter_map(|l| Some((l.node.as_str(), l.primary, l.records.as_ref()?)))
            .collect();
        let in_sync: BTreeSet<&str> = h
            .logs
            .iter()
            .filter(|l| l.queue == q && l.in_sync)
            .map(|l| l.node.as_str())
            .collect();
        let inv = invoked.get(q);
        let primary = logs.iter().find(|l| l.1);
        if primary.is_none() && !h.logs.iter().any(|l| l.queue == q && l.primary) {
            r.unreadable
                .push(format!("{q}: no final log of the primary was recorded"));
        }

        // Per log: duplicates, unexpected records, epochs going backwards.
        for (node, _, recs) in &logs {
            let mut seen: HashMap<u64, u64> = HashMap::new();
            let mut max_epoch = 0u32;
            for rec in recs.iter() {
                if rec.epoch < max_epoch {
                    r.divergent.push(Divergence {
                        queue: q.into(),
                        id: rec.id,
                        detail: vec![format!(
                            "{node}: epoch {} after epoch {max_epoch}",
                            rec.epoch
                        )],
                    });
                }
                max_epoch = max_epoch.max(rec.epoch);
                let v = decode_value(&rec.payload);
                match v.map(|v| (v, inv.and_then(|m| m.get(&v)))) {
                    None => r.unexpected.push(Unexpected {
                        queue: q.into(),
                        node: (*node).into(),
                        id: rec.id,
                        value: None,
                        reason: "payload is not a workload value".into(),
                    }),
                    Some((v, None)) => r.unexpected.push(Unexpected {
                        queue: q.into(),
                        node: (*node).into(),
                        id: rec.id,
                        value: Some(v),
                        reason: "never invoked on this queue".into(),
                    }),
                    Some((v, Some(EventType::Fail))) => r.unexpected.push(Unexpected {
                        queue: q.into(),
                        node: (*node).into(),
                        id: rec.id,
                        value: Some(v),
                        reason: "its enqueue reported a definite failure".into(),
                    }),
                    Some((v, Some(_))) => *seen.entry(v).or_default() += 1,
                }
            }
            for (v, n) in seen {
                if n > 1 {
                    r.duplicated.push(Duplicate {
                        queue: q.into(),
                        r#where: format!("log:{node}"),
                        value: v,
                        count: n,
                    });
                }
            }
        }

        // Divergence: the same id, different records.
        let mut by_id: BTreeMap<u64, Vec<(&str, &LogRecord)>> = BTreeMap::new();
        for (node, _, recs) in &logs {
            for rec in recs.iter() {
                by_id.entry(rec.id).or_default().push((node, rec));
            }
        }
        let primary_node = logs.iter().find(|l| l.1).map(|l| l.0);
        for (id, holders) in &by_id {
            // A record on a replica at an id the primary's log does not
            // have: the replica's log is not a copy of the primary's.
            if let Some(p) = primary_node {
                if !holders.iter().any(|(n, _)| *n == p) {
                    r.divergent.push(Divergence {
                        queue: q.into(),
                        id: *id,
                        detail: holders
                            .iter()
                            .map(|(n, x)| {
                                format!(
                                    "{n}: epoch {}, value {}",
                                    x.epoch,
                                    decode_value(&x.payload)
                                        .map_or_else(|| "<not a value>".into(), |v| v.to_string())
                                )
                            })
                            .chain(std::iter::once(format!(
                                "{p} (primary): no record at this id"
                            )))
                            .collect(),
                    });
                    continue;
                }
            }
            let first = holders[0].1;
            if holders
                .iter()
                .any(|(_, x)| x.epoch != first.epoch || x.payload != first.payload)
            {
                r.divergent.push(Divergence {
                    queue: q.into(),
                    id: *id,
                    detail: holders
                        .iter()
                        .map(|(n, x)| {
                            format!(
                                "{n}: epoch {}, value {}",
                                x.epoch,
                                decode_value(&x.payload)
                                    .map_or_else(|| "<not a value>".into(), |v| v.to_string())
                            )
                        })
                        .collect(),
                });
            }
        }

        // Lost and async: against the primary and its in-sync replicas.
        if let Some((pnode, _, precs)) = primary {
            let pids: BTreeSet<u64> = precs.iter().map(|x| x.id).collect();
            let values_of = |recs: &Vec<LogRecord>| -> BTreeSet<u64> {
                recs.iter()
                    .filter_map(|x| decode_value(&x.payload))
                    .collect()
            };
            let mut judged: Vec<(&str, BTreeSet<u64>)> = vec![(pnode, values_of(precs))];
            for (node, is_p, recs) in &logs {
                if *is_p {
                    continue;
                }
                let ids: BTreeSet<u64> = recs.iter().map(|x| x.id).collect();
                // Judged: a replica holding every id of the primary, and a
                // replica the catalog calls in sync whatever it holds.
                if ids.is_superset(&pids) || in_sync.contains(node) {
                    judged.push((node, values_of(recs)));
                } else {
                    r.lagging.push(format!(
                        "{q} on {node}: holds {} of the primary's {} ids",
                        ids.intersection(&pids).count(),
                        pids.len()
                    ));
                }
            }
            let mut async_epochs: BTreeMap<Option<u32>, EpochLoss> = BTreeMap::new();
            for o in ops
                .iter()
                .filter(|o| o.queue == q && o.outcome == EventType::Ok)
            {
                match o.mode {
                    Mode::Sync => {
                        let missing: Vec<String> = judged
                            .iter()
                            .filter(|(_, vals)| !vals.contains(&o.value))
                            .map(|(n, _)| (*n).to_string())
                            .collect();
                        if !missing.is_empty() {
                            r.lost.push(Lost {
                                queue: q.into(),
                                value: o.value,
                                missing_on: missing,
                            });
                        }
                    }
                    Mode::Async => {
                        r.async_loss.acknowledged += 1;
                        let e = async_epochs.entry(o.epoch).or_default();
                        e.last_ack_ns = e.last_ack_ns.max(o.complete_ns);
                        if !judged[0].1.contains(&o.value) {
                            e.lost += 1;
                            e.first_lost_ns = e.first_lost_ns.min(o.complete_ns);
                        }
                    }
                }
            }
            for e in async_epochs.values().filter(|e| e.lost > 0) {
                let a = &mut r.async_loss;
                a.lost += e.lost;
                a.epochs += 1;
                a.max_per_epoch = a.max_per_epoch.max(e.lost);
                a.window_ns = a.window_ns.max(e.last_ack_ns - e.first_lost_ns);
            }

            // Order: each client's acknowledged values in the primary's log.
            let pos: HashMap<u64, usize> = precs
                .iter()
                .enumerate()
                .filter_map(|(i, x)| Some((decode_value(&x.payload)?, i)))
                .collect();
            let mut last: HashMap<u64, (u64, usize)> = HashMap::new();
            let mut acked: Vec<&Enq> = ops
                .iter()
                .filter(|o| o.queue == q && o.outcome == EventType::Ok)
                .collect();
            acked.sort_by_key(|o| o.complete_ns);
            for o in acked {
                let Some(&p) = pos.get(&o.value) else {
                    continue;
                };
                if let Some(&(prev_v, prev_p)) = last.get(&o.process) {
                    if p < prev_p {
                        r.order.push(OrderViolation {
                            queue: q.into(),
                            process: o.process,
                            first: prev_v,
                            second: o.value,
                        });
                    }
                }
                last.insert(o.process, (o.value, p));
            }
        } else {
            r.async_loss.acknowledged += ops
                .iter()
                .filter(|o| o.queue == q && o.mode == Mode::Async && o.outcome == EventType::Ok)
                .count() as u64;
        }

        // Split brain: acceptance windows of different nodes overlapping.
        let mut windows: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
        let mut acc: Vec<&Enq> = ops
            .iter()
            .filter(|o| o.queue == q && o.outcome == EventType::Ok)
            .collect();
        acc.sort_by_key(|o| o.invoke_ns);
        for o in acc {
            let w = windows.entry(o.node.as_str()).or_default();
            match w.last_mut() {
                Some(last) if o.invoke_ns <= last.1.saturating_add(WINDOW_GAP_NS) => {
                    last.1 = last.1.max(o.complete_ns);
                }
                _ => w.push((o.invoke_ns, o.complete_ns)),
            }
        }
        let nodes: Vec<&str> = windows.keys().copied().collect();
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                for wa in &windows[a] {
                    for wb in &windows[b] {
                        let (s, e) = (wa.0.max(wb.0), wa.1.min(wb.1));
                        if s <= e {
                            r.split_brain.push(SplitBrain {
                                queue: q.into(),
                                nodes: ((*a).into(), (*b).into()),
                                start_ns: s,
                                end_ns: e,
                            });
                        }
                    }
                }
            }
        }
    }

    check_groups(h, &ops, opts, &mut r);
    r.duplicated
        .sort_by(|a, b| (&a.queue, &a.r#where, a.value).cmp(&(&b.queue, &b.r#where, b.value)));
    r
}

/// One take of a value by a group, in time order.
struct Take<'a> {
    time_ns: u64,
    node: &'a str,
    value: u64,
    /// Index of the leadership (run of takes by one node under one term).
    reign: usize,
}

/// Dequeues per group: duplicates, redeliveries and group losses.
fn check_groups(h: &History, ops: &[Enq], opts: &CheckOptions, r: &mut Report) {
    // (time, node, term, value) per (queue, group).
    type Raw<'a> = (u64, &'a str, Option<u32>, u64);
    let mut by_group: BTreeMap<(&str, &str), Vec<Raw<'_>>> = BTreeMap::new();
    for e in h
        .events
        .iter()
        .filter(|e| e.f == OpFn::Dequeue && e.kind == EventType::Ok)
    {
        r.dequeued += 1;
        by_group
            .entry((e.queue.as_str(), e.group.as_deref().unwrap_or("default")))
            .or_default()
            .push((e.time_ns, e.node.as_str(), e.term, e.value));
    }
    for ((q, g), mut raw) in by_group {
        // Stable: events of one reader keep their recorded order.
        raw.sort_by_key(|t| t.0);
        let mut takes: Vec<Take<'_>> = Vec::with_capacity(raw.len());
        let mut reign_end: Vec<u64> = Vec::new();
        let mut prev: Option<(&str, Option<u32>)> = None;
        for (time_ns, node, term, value) in raw {
            if prev != Some((node, term)) {
                reign_end.push(time_ns);
                prev = Some((node, term));
            }
            let reign = reign_end.len() - 1;
            reign_end[reign] = time_ns;
            takes.push(Take {
                time_ns,
                node,
                value,
                reign,
            });
        }
        let mut last_take: HashMap<u64, usize> = HashMap::new();
        let mut count: HashMap<u64, u64> = HashMap::new();
        let mut dup: BTreeSet<u64> = BTreeSet::new();
        let tail = g.starts_with(TAIL_GROUP_PREFIX);
        let mut stats = GroupStats {
            queue: q.into(),
            group: g.into(),
            taken: takes.len() as u64,
            leaderships: reign_end.len() as u64,
            ..GroupStats::default()
        };
        for (i, t) in takes.iter().enumerate() {
            *count.entry(t.value).or_default() += 1;
            if let Some(&p) = last_take.get(&t.value) {
                let first = &takes[p];
                let window = reign_end[first.reign].saturating_sub(first.time_ns);
                if first.reign != t.reign && window <= opts.redelivery_window_ns && !tail {
                    stats.redelivered += 1;
                    stats.max_window_ns = stats.max_window_ns.max(window);
                    r.redelivered.push(Redelivered {
                        queue: q.into(),
                        group: g.into(),
                        value: t.value,
                        first_node: first.node.into(),
                        again_node: t.node.into(),
                        window_ns: window,
                    });
                } else {
                    dup.insert(t.value);
                }
            }
            last_take.insert(t.value, i);
        }
        for v in dup {
            r.duplicated.push(Duplicate {
                queue: q.into(),
                r#where: format!("group:{g}"),
                value: v,
                count: count.get(&v).copied().unwrap_or(0),
            });
        }
        stats.distinct = count.len() as u64;
        if tail {
            continue;
        }
        // Every acknowledged sync value of the queue, taken at least once.
        for o in ops
            .iter()
            .filter(|o| o.queue == q && o.mode == Mode::Sync && o.outcome == EventType::Ok)
        {
            if !count.contains_key(&o.value) {
                stats.lost += 1;
                r.group_lost.push(GroupLost {
                    queue: q.into(),
                    group: g.into(),
                    value: o.value,
                });
            }
        }
        r.groups.push(stats);
    }
}

/// For each fault, the longest gap (ns) between consecutive acknowledged
/// sync writes to one queue that overlaps the fault's window, over all
/// queues: how long some queue stopped acknowledging sync writes around that
/// fault. A gap still open at the end of the history runs to its last
/// event. With a static primary this is the time until the primary is back
/// (or reachable); in cluster mode it includes the failover.
pub fn unavailability(h: &History) -> Vec<u64> {
    let mut acks: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let ops = enqueues(h);
    for o in ops
        .iter()
        .filter(|o| o.mode == Mode::Sync && o.outcome == EventType::Ok)
    {
        acks.entry(o.queue.as_str())
            .or_default()
            .push(o.complete_ns);
    }
    for v in acks.values_mut() {
        v.sort_unstable();
    }
    let end = h.events.iter().map(|e| e.time_ns).max().unwrap_or(0);
    h.faults
        .iter()
        .map(|f| {
            let mut worst = 0;
            for q in acks.values() {
                let mut prev: Option<u64> = None;
                for &t in q.iter().chain(std::iter::once(&end.max(f.end_ns))) {
                    if let Some(p) = prev {
                        if t >= f.start_ns && p <= f.end_ns {
                            worst = worst.max(t - p);
                        }
                    }
                    prev = Some(t);
                }
            }
            worst
        })
        .collect()
}

/// One failover seen in the history: acknowledged writes to `queue` moved
/// from one epoch to a higher one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failover {
    /// The queue.
    pub queue: String,
    /// The mode of the acknowledgement in the new epoch.
    pub mode: Mode,
    /// The epoch of the last acknowledgement before the change.
    pub from_epoch: u32,
    /// The epoch of the first acknowledgement after it.
    pub to_epoch: u32,
    /// Node of the last acknowledgement before.
    pub from_node: String,
    /// Node of the first acknowledgement after.
    pub to_node: String,
    /// Time (ns) from the last acknowledged write in the old epoch to the
    /// first in the new one: detection, election and the clients'
    /// move, as a client saw it.
    pub gap_ns: u64,
}

/// The failovers in a history, from the epochs returned with acknowledged
/// writes (sync and async: a queue has one mode): for each queue, in order
/// of acknowledgement, every change to a higher epoch. Acknowledgements that
/// carry no epoch are skipped.
pub fn failovers(h: &History) -> Vec<Failover> {
    let mut epoch_of: HashMap<(u64, u64), (u32, &str)> = HashMap::new();
    for e in h
        .events
        .iter()
        .filter(|e| e.f == OpFn::Enqueue && e.kind == EventType::Ok)
    {
        if let Some(ep) = e.epoch {
            epoch_of.insert((e.process, e.value), (ep, e.node.as_str()));
        }
    }
    let mut by_queue: BTreeMap<&str, Vec<(u64, u32, &str, Mode)>> = BTreeMap::new();
    let ops = enqueues(h);
    for o in ops.iter().filter(|o| o.outcome == EventType::Ok) {
        if let Some(&(ep, node)) = epoch_of.get(&(o.process, o.value)) {
            by_queue
                .entry(o.queue.as_str())
                .or_default()
                .push((o.complete_ns, ep, node, o.mode));
        }
    }
    let mut out = Vec::new();
    for (q, mut acks) in by_queue {
        acks.sort_unstable_by_key(|a| (a.0, a.1));
        let mut prev: Option<(u64, u32, &str, Mode)> = None;
        for a in acks {
            if let Some(p) = prev {
                if a.1 > p.1 {
                    out.push(Failover {
                        queue: q.to_string(),
                        mode: a.3,
                        from_epoch: p.1,
                        to_epoch: a.1,
                        from_node: p.2.to_string(),
                        to_node: a.2.to_string(),
                        gap_ns: a.0.saturating_sub(p.0),
                    });
                }
            }
            if prev.is_none_or(|p| a.1 >= p.1) {
                prev = Some(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{encode_value, Event, Fault, NodeLog};

    fn ev(kind: EventType, process: u64, node: &str, q: &str, mode: Mode, v: u64, t: u64) -> Event {
        Event {
            kind,
            f: OpFn::Enqueue,
            process,
            node: node.into(),
            queue: q.into(),
            mode,
            value: v,
            group: None,
            id: None,
            epoch: None,
            term: None,
            time_ns: t,
            error: None,
        }
    }

    /// Client 1 on n0 writes sync values 1..=n to q, each acknowledged.
    fn acked(h: &mut History, mode: Mode, values: &[u64]) {
        for (i, v) in values.iter().enumerate() {
            let t = 1_000 * (i as u64 + 1);
            h.events
                .push(ev(EventType::Invoke, 1, "n0", "q", mode, *v, t));
            h.events
                .push(ev(EventType::Ok, 1, "n0", "q", mode, *v, t + 500));
        }
    }

    fn log(node: &str, primary: bool, values: &[u64]) -> NodeLog {
        NodeLog {
            queue: "q".into(),
            node: node.into(),
            primary,
            in_sync: false,
            records: Some(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| LogRecord {
                        id: 100 + i as u64 * 32,
                        epoch: 0,
                        payload: encode_value(*v),
                    })
                    .collect(),
            ),
            error: None,
        }
    }

    fn clean() -> History {
        let mut h = History::default();
        acked(&mut h, Mode::Sync, &[1, 2, 3]);
        h.logs = vec![
            log("n0", true, &[1, 2, 3]),
            log("n1", false, &[1, 2, 3]),
            log("n2", false, &[1, 2, 3]),
        ];
        h
    }

    #[test]
    fn clean_history_reports_no_anomaly_and_passes() {
        let r = check(&clean());
        assert_eq!(r.sync.ok, 3);
        assert!(r.pass(), "{r:#?}");
        assert!(r.lagging.is_empty());
        assert_eq!(r.async_loss, AsyncLoss::default());
    }

    #[test]
    fn sync_ack_missing_from_primary_is_lost() {
        let mut h = clean();
        h.logs[0] = log("n0", true, &[1, 3]);
        let r = check(&h);
        assert!(!r.pass());
        assert_eq!(r.lost.len(), 1);
        assert_eq!(r.lost[0].value, 2);
        assert!(r.lost[0].missing_on.contains(&"n0".to_string()));
    }

    #[test]
    fn sync_ack_missing_from_an_in_sync_replica_is_lost() {
        let mut h = clean();
        // n1 holds every id of the primary but another value at the last one.
        h.logs[1] = log("n1", false, &[1, 2, 9]);
        let r = check(&h);
        assert!(r
            .lost
            .iter()
            .any(|l| l.value == 3 && l.missing_on == ["n1"]));
    }

    #[test]
    fn info_and_fail_operations_absent_from_the_log_are_not_lost() {
        let mut h = clean();
        h.events
            .push(ev(EventType::Invoke, 2, "n0", "q", Mode::Sync, 7, 10));
        h.events
            .push(ev(EventType::Info, 2, "n0", "q", Mode::Sync, 7, 20));
        h.events
            .push(ev(EventType::Invoke, 2, "n0", "q", Mode::Sync, 8, 30));
        h.events
            .push(ev(EventType::Fail, 2, "n0", "q", Mode::Sync, 8, 40));
        h.events
            .push(ev(EventType::Invoke, 3, "n0", "q", Mode::Sync, 9, 50));
        let r = check(&h);
        assert!(r.pass(), "{r:#?}");
        assert_eq!(
            r.sync.info, 2,
            "an invoke with no completion counts as info"
        );
        assert_eq!(r.sync.fail, 1);
    }

    #[test]
    fn a_value_twice_in_one_log_is_duplicated() {
        let mut h = clean();
        h.logs[0] = log("n0", true, &[1, 2, 2, 3]);
        let r = check(&h);
        assert!(r
            .duplicated
            .iter()
            .any(|d| d.value == 2 && d.r#where == "log:n0" && d.count == 2));
        assert!(!r.pass());
    }

    #[test]
    fn a_value_dequeued_twice_in_one_group_is_duplicated_but_not_across_groups() {
        let mut h = clean();
        let deq = |g: &str, v: u64| Event {
            kind: EventType::Ok,
            f: OpFn::Dequeue,
            group: Some(g.into()),
            ..ev(EventType::Ok, 9, "n0", "q", Mode::Sync, v, 5_000)
        };
        for v in [1, 2, 3] {
            h.events.push(deq("a", v));
            h.events.push(deq("b", v));
        }
        let r = check(&h);
        assert!(r.pass(), "one dequeue per group is fine: {r:#?}");
        h.events.push(deq("a", 1));
        let r = check(&h);
        assert_eq!(r.dequeued, 7);
        assert!(r
            .duplicated
            .iter()
            .any(|d| d.value == 1 && d.r#where == "group:a"));
    }

    #[test]
    fn a_record_never_invoked_or_not_a_value_or_failed_is_unexpected() {
        let mut h = clean();
        h.events
            .push(ev(EventType::Invoke, 2, "n0", "q", Mode::Sync, 8, 30));
        h.events
            .push(ev(EventType::Fail, 2, "n0", "q", Mode::Sync, 8, 40));
        let mut l = log("n0", true, &[1, 2, 3, 42, 8]);
        if let Some(recs) = l.records.as_mut() {
            recs.push(LogRecord {
                id: 999,
                epoch: 0,
                payload: b"garbage".to_vec(),
            });
        }
        h.logs[0] = l;
        let r = check(&h);
        assert!(!r.pass());
        assert!(r.unexpected.iter().any(|u| u.value == Some(42)));
        assert!(r.unexpected.iter().any(|u| u.value == Some(8)));
        assert!(r
            .unexpected
            .iter()
            .any(|u| u.value.is_none() && u.id == 999));
    }

    #[test]
    fn different_records_at_one_id_are_divergent() {
        let mut h = clean();
        // The replica-write bug: n2 appended its own record at the primary's next id.
        h.events
            .push(ev(EventType::Invoke, 5, "n2", "q", Mode::Async, 50, 2_100));
        h.events
            .push(ev(EventType::Ok, 5, "n2", "q", Mode::Async, 50, 2_200));
        h.logs[2] = log("n2", false, &[1, 2, 50]);
        let r = check(&h);
        assert!(!r.pass());
        assert_eq!(r.divergent.len(), 1, "{r:#?}");
        assert_eq!(r.divergent[0].id, 164);
        assert!(r.divergent[0].detail.iter().any(|d| d.contains("value 50")));
        assert!(
            r.unexpected.is_empty(),
            "an invoked value is not unexpected"
        );
    }

    #[test]
    fn a_replica_record_at_an_id_the_primary_lacks_is_divergent() {
        let mut h = clean();
        if let Some(recs) = h.logs[1].records.as_mut() {
            recs.push(LogRecord {
                id: 500,
                epoch: 0,
                payload: encode_value(3),
            });
        }
        let r = check(&h);
        assert_eq!(r.divergent.len(), 1, "{r:#?}");
        assert_eq!(r.divergent[0].id, 500);
        assert!(r.divergent[0]
            .detail
            .iter()
            .any(|d| d.contains("no record")));
    }

    #[test]
    fn same_payload_under_different_epochs_is_divergent() {
        let mut h = clean();
        if let Some(recs) = h.logs[1].records.as_mut() {
            recs[0].epoch = 1;
        }
        let r = check(&h);
        assert!(r.divergent.iter().any(|d| d.id == 100));
    }

    #[test]
    fn a_log_whose_epoch_goes_backwards_is_divergent() {
        let mut h = clean();
        for l in &mut h.logs {
            if let Some(recs) = l.records.as_mut() {
                recs[1].epoch = 2;
                recs[2].epoch = 1;
            }
        }
        let r = check(&h);
        assert_eq!(r.divergent.len(), 3, "one per log: {r:#?}");
    }

    #[test]
    fn a_clients_acknowledged_values_out_of_log_order_is_an_order_anomaly() {
        let mut h = clean();
        for (i, n) in ["n0", "n1", "n2"].iter().enumerate() {
            h.logs[i] = log(n, i == 0, &[1, 3, 2]);
        }
        let r = check(&h);
        assert_eq!(r.order.len(), 1, "{r:#?}");
        assert_eq!(
            (r.order[0].first, r.order[0].second),
            (2, 3),
            "2 acked before 3, 3 logged first"
        );
        assert!(!r.pass());
    }

    #[test]
    fn two_nodes_accepting_appends_at_overlapping_times_is_split_brain() {
        let mut h = clean();
        h.events
            .push(ev(EventType::Invoke, 7, "n1", "q", Mode::Sync, 60, 1_200));
        h.events
            .push(ev(EventType::Ok, 7, "n1", "q", Mode::Sync, 60, 1_300));
        for (i, n) in ["n0", "n1", "n2"].iter().enumerate() {
            h.logs[i] = log(n, i == 0, &[1, 60, 2, 3]);
        }
        let r = check(&h);
        assert_eq!(r.split_brain.len(), 1, "{r:#?}");
        assert_eq!(r.split_brain[0].nodes, ("n0".into(), "n1".into()));
        assert!(!r.pass());
    }

    #[test]
    fn appends_on_two_nodes_far_apart_in_time_are_not_split_brain() {
        let mut h = clean();
        let t = 10 * WINDOW_GAP_NS;
        h.events
            .push(ev(EventType::Invoke, 7, "n1", "q", Mode::Sync, 60, t));
        h.events
            .push(ev(EventType::Ok, 7, "n1", "q", Mode::Sync, 60, t + 100));
        for (i, n) in ["n0", "n1", "n2"].iter().enumerate() {
            h.logs[i] = log(n, i == 0, &[1, 2, 3, 60]);
        }
        let r = check(&h);
        assert!(r.split_brain.is_empty(), "{r:#?}");
    }

    #[test]
    fn lost_async_acknowledgements_are_counted_with_a_bound_but_do_not_fail() {
        let mut h = History::default();
        acked(&mut h, Mode::Async, &[1, 2, 3, 4]);
        h.logs = vec![log("n0", true, &[1, 4]), log("n1", false, &[1, 4])];
        let r = check(&h);
        assert_eq!(r.async_loss.acknowledged, 4);
        assert_eq!(r.async_loss.lost, 2);
        assert_eq!((r.async_loss.epochs, r.async_loss.max_per_epoch), (1, 2));
        assert_eq!(
            r.async_loss.window_ns, 2_000,
            "value 2 acked 2 µs before the epoch's last acknowledgement (value 4)"
        );
        assert!(r.lost.is_empty(), "async losses are not sync losses");
        assert!(r.pass());
    }

    #[test]
    fn the_async_bound_is_per_epoch_not_the_span_from_the_first_loss_to_the_last() {
        // Epoch 1 loses its last two acknowledgements (1 µs before its
        // last), epoch 2, a second later, its last one: the bound is 1 µs
        // and 2 values per epoch, not the second between the losses.
        let mut h = History::default();
        let mut t = 0;
        for (v, epoch) in [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)] {
            t += if v == 4 { 1_000_000_000 } else { 1_000 };
            h.events
                .push(ev(EventType::Invoke, 1, "n0", "q", Mode::Async, v, t));
            let mut ok = ev(EventType::Ok, 1, "n0", "q", Mode::Async, v, t + 500);
            ok.epoch = Some(epoch);
            h.events.push(ok);
        }
        h.logs = vec![log("n0", true, &[1, 4]), log("n1", false, &[1, 4])];
        let r = check(&h);
        assert_eq!(r.async_loss.lost, 3);
        assert_eq!(r.async_loss.epochs, 2);
        assert_eq!(r.async_loss.max_per_epoch, 2);
        assert_eq!(r.async_loss.window_ns, 1_000);
        assert!(r.pass());
    }

    #[test]
    fn a_replica_missing_ids_is_lagging_not_judged_for_loss() {
        let mut h = clean();
        h.logs[2] = log("n2", false, &[1]);
        let r = check(&h);
        assert!(r.lost.is_empty(), "{r:#?}");
        assert_eq!(r.lagging.len(), 1);
    }

    #[test]
    fn an_unreadable_log_fails_the_check() {
        let mut h = clean();
        h.logs[0].records = None;
        h.logs[0].error = Some("boom".into());
        let r = check(&h);
        assert!(!r.pass());
        assert!(r.unreadable.iter().any(|u| u.contains("boom")));
    }

    #[test]
    fn unavailability_is_the_longest_gap_between_sync_acks_overlapping_the_fault() {
        let mut h = clean();
        // Acks at 1_500, 2_500, 3_500; a fourth at 9_500 after a long gap.
        h.events
            .push(ev(EventType::Invoke, 1, "n0", "q", Mode::Sync, 4, 4_000));
        h.events
            .push(ev(EventType::Ok, 1, "n0", "q", Mode::Sync, 4, 9_500));
        let fault = |s, e| Fault {
            kind: "kill".into(),
            target: "n0".into(),
            start_ns: s,
            end_ns: e,
        };
        h.faults.push(fault(4_000, 5_000));
        h.faults.push(fault(1_600, 1_700));
        assert_eq!(unavailability(&h), vec![6_000, 1_000]);
    }

    #[test]
    fn unavailability_of_one_stalled_queue_is_not_hidden_by_another_queue() {
        let mut h = clean();
        // Queue r keeps acknowledging every 1_000 ns while q stalls from 3_500 to 9_500.
        for i in 0..10u64 {
            let t = 1_000 * (i + 1);
            h.events
                .push(ev(EventType::Invoke, 2, "n0", "r", Mode::Sync, 100 + i, t));
            h.events
                .push(ev(EventType::Ok, 2, "n0", "r", Mode::Sync, 100 + i, t + 10));
        }
        h.events
            .push(ev(EventType::Invoke, 1, "n0", "q", Mode::Sync, 4, 4_000));
        h.events
            .push(ev(EventType::Ok, 1, "n0", "q", Mode::Sync, 4, 9_500));
        h.faults.push(Fault {
            kind: "pause".into(),
            target: "n0".into(),
            start_ns: 4_000,
            end_ns: 5_000,
        });
        assert_eq!(unavailability(&h), vec![6_000]);
    }

    #[test]
    fn a_replica_the_catalog_calls_in_sync_is_judged_even_when_it_lacks_ids() {
        let mut h = clean();
        // n1 lacks the last id: not a superset, so only the catalog's word
        // makes it judged.
        h.logs[1] = log("n1", false, &[1, 2]);
        let r = check(&h);
        assert!(r.lost.is_empty(), "{r:#?}");
        assert_eq!(r.lagging.len(), 1);
        h.logs[1].in_sync = true;
        let r = check(&h);
        assert!(
            r.lost
                .iter()
                .any(|l| l.value == 3 && l.missing_on == ["n1"]),
            "{r:#?}"
        );
        assert!(!r.pass());
    }

    #[test]
    fn failovers_are_the_changes_of_epoch_between_acknowledged_sync_writes() {
        let mut h = History::default();
        let mut at = |p: u64, node: &str, v: u64, t: u64, epoch: u32, kind: EventType| {
            h.events
                .push(ev(EventType::Invoke, p, node, "q", Mode::Sync, v, t));
            let mut e = ev(kind, p, node, "q", Mode::Sync, v, t + 10);
            e.epoch = Some(epoch);
            h.events.push(e);
        };
        at(1, "n0", 1, 1_000, 1, EventType::Ok);
        at(1, "n0", 2, 2_000, 1, EventType::Ok);
        // An info in a new epoch is no acknowledgement.
        at(2, "n1", 3, 3_000, 2, EventType::Info);
        at(2, "n1", 4, 7_000, 2, EventType::Ok);
        at(2, "n1", 5, 8_000, 2, EventType::Ok);
        // A late acknowledgement of an older epoch does not count twice.
        at(1, "n0", 6, 8_500, 1, EventType::Ok);
        at(3, "n2", 7, 12_000, 4, EventType::Ok);
        let f = failovers(&h);
        assert_eq!(f.len(), 2, "{f:#?}");
        assert_eq!((f[0].from_epoch, f[0].to_epoch), (1, 2));
        assert_eq!(f[0].mode, Mode::Sync);
        assert_eq!(
            (f[0].from_node.as_str(), f[0].to_node.as_str()),
            ("n0", "n1")
        );
        assert_eq!(f[0].gap_ns, 7_010 - 2_010);
        assert_eq!((f[1].from_epoch, f[1].to_epoch), (2, 4));
        assert_eq!(f[1].gap_ns, 12_010 - 8_010);
        assert!(failovers(&clean()).is_empty(), "no epochs, no failover");
    }

    const MS: u64 = 1_000_000;

    /// A take of value `v` in group `g` by `node` under leader epoch `term`
    /// at `t_ms` milliseconds.
    fn take(g: &str, node: &str, term: Option<u32>, v: u64, t_ms: u64) -> Event {
        Event {
            f: OpFn::Dequeue,
            group: Some(g.into()),
            term,
            ..ev(EventType::Ok, 50, node, "q", Mode::Sync, v, t_ms * MS)
        }
    }

    /// `clean()` with group `g` taking 1, 2, 3 on n0 under term 1 at 1.0,
    /// 1.1 and 1.2 s.
    fn clean_group() -> History {
        let mut h = clean();
        for (i, v) in [1, 2, 3].iter().enumerate() {
            h.events
                .push(take("g", "n0", Some(1), *v, 1_000 + 100 * i as u64));
        }
        h
    }

    #[test]
    fn a_clean_history_with_a_group_that_took_everything_passes() {
        let r = check(&clean_group());
        assert!(r.pass(), "{r:#?}");
        assert!(r.redelivered.is_empty() && r.group_lost.is_empty());
        assert_eq!(r.groups.len(), 1);
        assert_eq!((r.groups[0].taken, r.groups[0].distinct), (3, 3));
        assert_eq!(r.groups[0].leaderships, 1);
    }

    #[test]
    fn a_take_again_on_another_leader_within_the_window_is_redelivered_not_a_failure() {
        let mut h = clean_group();
        // n0's last take is at 1.2 s; n1 leads from 4 s and takes 2 and 3
        // again (taken 100 ms and 0 ms before n0's leadership ended).
        h.events.push(take("g", "n1", Some(2), 2, 4_000));
        h.events.push(take("g", "n1", Some(2), 3, 4_100));
        let r = check(&h);
        assert!(r.pass(), "{r:#?}");
        assert!(r.duplicated.is_empty());
        assert_eq!(r.redelivered.len(), 2);
        assert_eq!(r.redelivered[0].first_node, "n0");
        assert_eq!(r.redelivered[0].again_node, "n1");
        assert_eq!(r.groups[0].redelivered, 2);
        assert_eq!(r.groups[0].max_window_ns, 100 * MS);
        assert_eq!(r.groups[0].leaderships, 2);
    }

    #[test]
    fn a_take_again_on_the_same_node_under_a_new_term_within_the_window_is_redelivered() {
        let mut h = clean_group();
        // n0 lost its disk and leads again under term 3: its cursor came
        // from the replicated table.
        h.events.push(take("g", "n0", Some(3), 3, 5_000));
        let r = check(&h);
        assert!(r.pass(), "{r:#?}");
        assert_eq!(r.redelivered.len(), 1);
    }

    #[test]
    fn a_take_again_on_the_same_node_in_one_leadership_is_duplicated() {
        let mut h = clean_group();
        h.events.push(take("g", "n0", Some(1), 2, 1_300));
        let r = check(&h);
        assert!(!r.pass());
        assert!(r.redelivered.is_empty());
        assert!(r
            .duplicated
            .iter()
            .any(|d| d.value == 2 && d.r#where == "group:g" && d.count == 2));
    }

    #[test]
    fn a_take_again_whose_first_take_is_older_than_the_window_is_duplicated() {
        let mut h = clean();
        // Value 1 taken at 1 s; n0 leads until 5 s (its last take); n1
        // takes 1 again: 4 s before the change, more than the 2 s window.
        h.events.push(take("g", "n0", Some(1), 1, 1_000));
        h.events.push(take("g", "n0", Some(1), 2, 2_000));
        h.events.push(take("g", "n0", Some(1), 3, 5_000));
        h.events.push(take("g", "n1", Some(2), 1, 6_000));
        let r = check(&h);
        assert!(!r.pass());
        assert!(r.redelivered.is_empty());
        assert!(r
            .duplicated
            .iter()
            .any(|d| d.value == 1 && d.r#where == "group:g"));
        // A wider window makes the same take a redelivery.
        let wide = CheckOptions {
            redelivery_window_ns: 5_000 * MS,
        };
        let r = check_with(&h, &wide);
        assert!(r.pass(), "{r:#?}");
        assert_eq!(r.groups[0].max_window_ns, 4_000 * MS);
    }

    #[test]
    fn an_acknowledged_sync_value_a_group_never_took_is_group_lost() {
        let mut h = clean();
        h.events.push(take("g", "n0", Some(1), 1, 1_000));
        h.events.push(take("g", "n1", Some(2), 3, 4_000));
        let r = check(&h);
        assert!(!r.pass());
        assert_eq!(
            r.group_lost,
            vec![GroupLost {
                queue: "q".into(),
                group: "g".into(),
                value: 2
            }]
        );
        assert_eq!(r.groups[0].lost, 1);
    }

    #[test]
    fn a_tailer_is_judged_for_duplicates_but_not_for_group_loss_or_redelivery() {
        let mut h = clean();
        h.events.push(take("tail-n0", "n0", None, 1, 1_000));
        let r = check(&h);
        assert!(r.pass(), "a tailer need not read everything: {r:#?}");
        assert!(r.groups.is_empty());
        h.events.push(take("tail-n0", "n0", None, 1, 1_100));
        assert!(!check(&h).pass());
    }

    #[test]
    fn the_redelivery_window_is_half_the_failover_timeout_plus_750_ms() {
        assert_eq!(redelivery_window_ns(2500), DEFAULT_REDELIVERY_WINDOW_NS);
        assert_eq!(redelivery_window_ns(5000), 3_250 * MS);
    }
}
