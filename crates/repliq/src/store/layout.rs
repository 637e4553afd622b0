//! Every constant of the on-disk format, in one place.
//!
//! `docs/format.md` describes the same layout for humans; the two must agree.
//!
//! # Files of a queue directory
//!
//! | file | content |
//! |---|---|
//! | [`CONTROL_FILE`] | the control file, [`CONTROL_SIZE`] bytes, mapped shared by every process |
//! | [`DIR_LOCK_FILE`] | empty; `flock`ed briefly to serialise queue creation and slot allocation |
//! | `{index:020}.seg` ([`SEGMENT_SUFFIX`]) | segment `index`, exactly `segment_size` bytes, preallocated |
//! | [`EPOCHS_FILE`] | the leader-epoch history (see `epochs`), absent until replication starts an epoch |
//! | `quarantine-{from:020}-{unix_ns}.rq` ([`QUARANTINE_PREFIX`]) | records a truncation removed from the log (see `truncate`) |
//!
//! # Positions and message ids
//!
//! The log is a sequence of bytes addressed by a 64-bit *position*. Segment `k`
//! holds positions `[k * segment_size, (k + 1) * segment_size)`; the first
//! [`SEGMENT_HEADER_LEN`] bytes of every segment are its header, so the first
//! frame of segment `k` sits at `k * segment_size + SEGMENT_HEADER_LEN`.
//! A message id **is** the position of its frame. Ids are therefore stable,
//! strictly increasing, identical on byte-identical replicas, and a reader
//! seeks to one in O(1): `segment = id >> log2(segment_size)`,
//! `offset = id & (segment_size - 1)`.
//!
//! # Frame layout (all integers little-endian, frames 8-byte aligned)
//!
//! ```text
//! offset  size  field
//! 0       8     word0 (atomic):  frame_length:u32 | flags:u16 << 32 | check:u16 << 48
//! 8       8     word1:           epoch:u32 | crc32c:u32 << 32   (committed data frame)
//!                                owner_pid:u32                  (while NOT_COMPLETE)
//! 16      n     payload (data frames only)
//! ```
//!
//! * `frame_length` counts header and payload, not the alignment padding; the
//!   next frame starts at `align8(frame_length)`.
//! * `check` is the low 16 bits of CRC32C over the first six bytes of word0
//!   (length and flags), so word0 validates itself in one atomic load. A
//!   padding frame consists of word0 only and is trusted through `check`.
//! * `crc32c` covers `frame_length`, `flags` (as committed), `epoch` and the
//!   payload.
//!
//! # Concurrency invariants of the shared layout
//!
//! These hold for every process mapping the queue, and are exercised by the
//! loom model in `store::frame_ops` and the multi-process tests:
//!
//! 1. **Zero means unwritten.** Segments are created zero-filled and a word0
//!    never returns to zero. Positions are never reused.
//! 2. **Header-first claim.** A writer claims position `t` (the value of
//!    `tail`) by CAS of word0 at `t` from 0 to `NOT_COMPLETE|length`. Only
//!    then is `tail` moved from `t` to `t + align8(length)`, by the claimer or
//!    by any other writer that finds word0 at `tail` non-zero (helping).
//!    Hence *every position below `tail` has a non-zero word0 whose length is
//!    known*, and a writer killed at any instruction never hides where the
//!    next frame starts.
//! 3. **Publication.** The claimer writes payload and word1 with plain stores,
//!    then CASes word0 from its pending value to the committed value with
//!    release ordering. A reader that loads a committed word0 with acquire
//!    ordering sees the complete frame.
//! 4. **Exactly one resolution.** A pending word0 is resolved once: either the
//!    writer's commit CAS or an unblocker's CAS to `PADDING` wins. An
//!    unblocker acts only when the owner pid is dead or the configured
//!    recovery timeout has passed. A writer whose commit CAS loses writes its
//!    message again at a new position, so nothing acknowledged is lost.
//! 5. **Segment roll.** A writer that does not fit first makes sure the next
//!    segment file exists (created under a temporary name, preallocated, then
//!    linked into place), and only then writes a padding frame to the end of
//!    the current segment. A reader therefore never follows padding into a
//!    segment that does not exist.
//! 6. **Consumption.** A consumer group's cursor moves from a committed frame
//!    to the next by CAS; the process whose CAS succeeds owns that message.
//!    Frames are immutable once committed, so the owner may read the payload
//!    after the CAS for as long as it holds the segment mapping.
//! 7. **Wake-ups.** A writer commits (SeqCst CAS) and then loads `waiters`
//!    (SeqCst); a sleeper increments `waiters`, issues a SeqCst fence, and
//!    re-checks before `FUTEX_WAIT` on `notify_seq`. One of the two always
//!    sees the other, so no wake-up is lost; the futex word is shared, never
//!    `FUTEX_PRIVATE`.
//! 8. **Batch span.** A batch append (`Store::append_many_with`) claims the
//!    frames of several records with one claim (invariant 2): word0 at `t`
//!    goes from 0 to `NOT_COMPLETE|span_length`, where `span_length` is the
//!    sum of the records' aligned frame lengths (so the span is 8-aligned and
//!    `tail` moves past all of them at once). The span lies in one segment:
//!    a batch that does not fit what is left of it rolls first (invariant 5),
//!    one larger than a whole segment is cut into several spans. Inside the
//!    span, the writer writes every record but the first whole, as an
//!    ordinary committed frame (payload, word1, then word0 with a plain
//!    store), then the first record's payload and word1, and publishes the
//!    lot with the one release CAS of word0 at `t` from the span's pending
//!    value to the first record's committed header (invariant 3). Hence:
//!    a reader never passes `t` before that CAS, and after it (acquire) it
//!    sees every frame of the span complete, back to back, with dense ids in
//!    the batch's order; the pending span is resolved once (invariant 4),
//!    and an unblocker or recovery turns it into *one* padding frame of
//!    `span_length`, so a batch writer that dies or stalls before its CAS
//!    leaves all of its span or none of it, never a torn record. Nothing in
//!    the format distinguishes a batch: after the CAS its frames are
//!    ordinary frames.

/// Name of the control file inside a queue directory.
pub const CONTROL_FILE: &str = "control.rq";
/// Name of the lock file serialising queue creation and slot allocation
/// (an exclusive `flock`, held briefly; the file itself stays empty).
pub const DIR_LOCK_FILE: &str = "control.lock";
/// Suffix of segment files; the stem is the segment index as 20 decimal digits.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of a segment being created, before it is linked into place.
pub const SEGMENT_TMP_SUFFIX: &str = ".seg.tmp";

/// Name of the leader-epoch history file inside a queue directory.
pub const EPOCHS_FILE: &str = "epochs.rq";
/// Magic number at offset 0 of the epoch history (`b"RPLQEPCH"`).
pub const EPOCHS_MAGIC: u64 = u64::from_le_bytes(*b"RPLQEPCH");
/// Version of the epoch history's format.
pub const EPOCHS_VERSION: u32 = 1;
/// Entries kept in the epoch history (the newest).
pub const EPOCHS_MAX_ENTRIES: usize = 4096;
/// Name of the leader hint inside a queue directory: one line, `NAME EPOCH`,
/// the queue's leader as this node's cluster daemon last learnt it from the
/// catalog. Written by replacing the file (write, then rename); read only to
/// name the leader in a refused append's error, never to decide anything.
pub const LEADER_FILE: &str = "leader";
/// Prefix of quarantine files: records removed by a truncation.
pub const QUARANTINE_PREFIX: &str = "quarantine-";
/// Magic number at offset 0 of a quarantine file (`b"RPLQQUAR"`).
pub const QUARANTINE_MAGIC: u64 = u64::from_le_bytes(*b"RPLQQUAR");
/// Version of the quarantine file's format.
pub const QUARANTINE_VERSION: u32 = 1;

/// Magic number at offset 0 of the control file (`b"RPLQCTRL"`).
pub const CONTROL_MAGIC: u64 = u64::from_le_bytes(*b"RPLQCTRL");
/// Magic number at offset 0 of every segment file (`b"RPLQSEGM"`).
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"RPLQSEGM");
/// Version of the on-disk format; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// Size of the control file in bytes.
pub const CONTROL_SIZE: usize = 64 * 1024;
/// Size of the header at the start of every segment.
pub const SEGMENT_HEADER_LEN: u64 = 64;
/// Size of a data frame header (word0 and word1).
pub const FRAME_HEADER_LEN: u64 = 16;
/// Alignment of every frame.
pub const FRAME_ALIGN: u64 = 8;
/// Smallest frame: a padding frame is word0 alone.
pub const PADDING_MIN_LEN: u64 = 8;

/// Largest payload of one record, whatever the segment size: a replication
/// `Records` frame is at most 16 MiB (`replication::protocol::DEFAULT_MAX_FRAME`,
/// its kind byte and position included, and the sender leaves 16 bytes of
/// it for them), and it must carry a record's whole store frame (16-byte
/// header, payload, alignment). The store refuses anything larger with
/// `TooLarge`, replicated or not, so that no record can stall replication.
pub const MAX_RECORD_PAYLOAD: u64 = (16 << 20) - 16 - FRAME_HEADER_LEN;
/// Smallest allowed segment size.
pub const MIN_SEGMENT_SIZE: u64 = 4096;
/// Largest allowed segment size (frame lengths are `u32`).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;
/// Default segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;

/// Frame flag: claimed, not yet committed. Readers wait at such a frame.
pub const FLAG_NOT_COMPLETE: u16 = 0x1;
/// Frame flag: padding; readers skip `frame_length` bytes.
pub const FLAG_PADDING: u16 = 0x2;
/// Frame flag: metadata frame, written by repliq itself, not delivered to applications.
pub const FLAG_METADATA: u16 = 0x4;
/// word0 that recovery writes where acknowledged data was lost (a zero word
/// below the flushed position): it never validates, so readers report the
/// position as corrupt instead of waiting there for a writer.
pub const DAMAGED_WORD0: u64 = u64::MAX;
/// Every flag bit this version knows. Others make a frame corrupt.
pub const FLAGS_KNOWN: u16 = FLAG_NOT_COMPLETE | FLAG_PADDING | FLAG_METADATA;

// ---- segment header (offsets within a segment file) ----

/// Segment header: magic (u64).
pub const SEG_MAGIC_OFF: usize = 0;
/// Segment header: format version (u32).
pub const SEG_VERSION_OFF: usize = 8;
/// Segment header: header length (u32), always [`SEGMENT_HEADER_LEN`].
pub const SEG_HEADER_LEN_OFF: usize = 12;
/// Segment header: segment index (u64).
pub const SEG_INDEX_OFF: usize = 16;
/// Segment header: segment size (u64).
pub const SEG_SIZE_OFF: usize = 24;
/// Segment header: queue id (u64), equal to the control file's.
pub const SEG_QUEUE_ID_OFF: usize = 32;

// ---- control file (byte offsets). Hot words sit on their own 128-byte line. ----

/// Control: magic (u64).
pub const CTL_MAGIC_OFF: usize = 0;
/// Control: format version (u32).
pub const CTL_VERSION_OFF: usize = 8;
/// Control: control file size (u32).
pub const CTL_SIZE_OFF: usize = 12;
/// Control: segment size in bytes (u64, a power of two).
pub const CTL_SEGMENT_SIZE_OFF: usize = 16;
/// Control: capacity in messages (u64).
pub const CTL_CAPACITY_OFF: usize = 24;
/// Control: durability (u32: 0 none, 1 batch, 2 always).
pub const CTL_DURABILITY_OFF: usize = 32;
/// Control: recovery timeout for stuck writers in milliseconds (u32).
pub const CTL_RECOVERY_TIMEOUT_OFF: usize = 36;
/// Control: random queue id (u64), also stamped into each segment.
pub const CTL_QUEUE_ID_OFF: usize = 40;
/// Control: creation time, Unix nanoseconds (u64).
pub const CTL_CREATED_OFF: usize = 48;

/// Control: `tail`, the write position (atomic u64). Next frame is claimed here.
pub const CTL_TAIL_OFF: usize = 128;
/// Control: `committed`, a position below which every frame is complete (atomic u64, advanced lazily).
pub const CTL_COMMITTED_OFF: usize = 136;
/// Control: messages reserved by writers, i.e. appended plus in flight (atomic u64).
pub const CTL_RESERVED_OFF: usize = 256;
/// Control: futex word bumped by writers when sleepers exist (atomic u32).
pub const CTL_NOTIFY_SEQ_OFF: usize = 384;
/// Control: number of sleepers on [`CTL_NOTIFY_SEQ_OFF`] (atomic u32).
pub const CTL_WAITERS_OFF: usize = 388;
/// Control: current epoch (leader term) stamped into new frames (atomic u32).
pub const CTL_EPOCH_OFF: usize = 512;
/// Control: replication role (atomic u32: [`ROLE_STANDALONE`], [`ROLE_PRIMARY`],
/// [`ROLE_SECONDARY`] or [`ROLE_CHANGING`]). Shared by every process that maps the queue: while
/// it says secondary, `Store::append` refuses in every process, and only the
/// replication receiver writes the log.
pub const CTL_ROLE_OFF: usize = 516;
/// Role word: a queue no replication layer has claimed (appends allowed).
pub const ROLE_STANDALONE: u32 = 0;
/// Role word: the queue is a primary's (appends allowed).
pub const ROLE_PRIMARY: u32 = 1;
/// Role word: the queue is a replica (appends refused in every process).
pub const ROLE_SECONDARY: u32 = 2;
/// Role word: this node is taking or handing over the queue's leadership
/// (starting an epoch, waiting for its lease, a planned transfer). Appends
/// wait for the outcome, up to [`ROLE_CHANGE_WAIT_MS`], instead of failing at
/// once; builds that do not know the code treat it as a replica's.
pub const ROLE_CHANGING: u32 = 3;
/// How long an append waits while the role word says [`ROLE_CHANGING`]
/// before it fails with `StoreError::ReadOnly`.
pub const ROLE_CHANGE_WAIT_MS: u64 = 2_000;
/// Control: replicated (quorum) watermark position (atomic u64).
pub const CTL_REPLICATED_OFF: usize = 520;
/// Control: the leader's lease deadline, `CLOCK_MONOTONIC` nanoseconds
/// (atomic u64; 0: no lease, as for a standalone queue or a static primary).
/// Written by the cluster daemon while it leads and holds its lease. While
/// the role word says primary and `CLOCK_MONOTONIC_COARSE` has reached it,
/// appends wait as for [`ROLE_CHANGING`]: a leader whose daemon is stopped or
/// dead stops taking appends in every process once its lease runs out, before
/// the catalog can elect another leader (the failover timeout is twice the
/// lease; the coarse clock lags the fine one by at most a tick).
pub const CTL_LEASE_UNTIL_OFF: usize = 528;
/// Control: the secondary acknowledgements a synchronous `enqueue` of the
/// founding API waits for when the queue is replicated by a daemon (atomic
/// u32; 0: none, as for a standalone queue or asynchronous replication).
/// Written by the daemon that leads the queue, from the queue's replication
/// mode (`min_insync - 1` in a cluster, `min_acks` with a static primary).
/// A process that replicates the queue itself (`with_replication`) uses its
/// own setting instead.
pub const CTL_SYNC_ACKS_OFF: usize = 536;
/// Control: index of the oldest segment still on disk (atomic u64).
pub const CTL_LOW_SEGMENT_OFF: usize = 640;
/// Control: number of stuck frames turned into padding (atomic u64).
pub const CTL_UNBLOCKED_OFF: usize = 648;
/// Control: number of recoveries run on open (atomic u64).
pub const CTL_RECOVERIES_OFF: usize = 656;
/// Control: position up to which segments were last flushed (atomic u64).
pub const CTL_FLUSHED_OFF: usize = 664;

/// Control: highest segment index ever created (atomic u64). A segment at or
/// below it that is missing was deleted by retention and is never recreated.
pub const CTL_HIGH_SEGMENT_OFF: usize = 672;

/// Control: appends refused with `Full` (atomic u64).
pub const CTL_FULL_REJECTIONS_OFF: usize = 680;

/// Control: truncations of this log so far (atomic u64). A truncation
/// replaces the files of the segments it cuts instead of rewriting mapped
/// bytes, so a reader holding an old mapping reads old, intact frames; when
/// such a reader finds no frame and sees this count changed, it drops its
/// mappings and moves back to [`CTL_TRUNCATED_TO_OFF`] if it was past it.
pub const CTL_TRUNCATIONS_OFF: usize = 688;
/// Control: the position the last truncation cut the log at (atomic u64).
pub const CTL_TRUNCATED_TO_OFF: usize = 696;
/// Control: records moved to quarantine by truncations, in total (atomic u64).
pub const CTL_TRUNCATED_RECORDS_OFF: usize = 704;

/// Control: the boot in which processes have had the queue open since it was
/// last closed cleanly: the running boot's id
/// (`/proc/sys/kernel/random/boot_id`, 128 bits as two atomic u64, low half
/// first), stored by every open once it holds its shared `flock`; zeroed by
/// the last process to close the queue (it holds the exclusive `flock` to do
/// it). On an exclusive open, a value equal to the running boot means the
/// previous users died (`kill -9`, an exit without closing) and the page
/// cache kept everything they wrote: recovery takes its fast path (see
/// `recovery`). Zero (a clean close, a queue from before this field) or
/// another boot (a power loss) gets the full walk.
pub const CTL_LIVE_BOOT_OFF: usize = 896;
/// Control: the recovery checkpoint, four atomic u64 written by recovery
/// only: the end of the log at the last recovery, the default group's
/// cursor then, the messages between the two, and a tag: the truncation
/// count then plus one (0: no checkpoint; a truncation since voids it).
/// The tag is cleared first and set last.
pub const CTL_CHECKPOINT_OFF: usize = 912;

/// Control: the sampled enqueue-latency histogram (see [`HIST_BUCKETS`]).
/// Every process appending records one append in [`LATENCY_SAMPLE_EVERY`]
/// per thread, from entering `append` to the commit (and flush, with
/// `Durability::Always`).
pub const CTL_ENQUEUE_LATENCY_OFF: usize = 1024;
/// Control: the histogram of synchronous enqueue waits for acknowledgements
/// (every synchronous enqueue, not sampled).
pub const CTL_SYNC_WAIT_OFF: usize = 1536;
/// Buckets of a latency histogram. Bucket `i` (atomic u64 at `8 * i`) counts
/// samples below `HIST_FIRST_BOUND_NS << i` nanoseconds and at or above the
/// previous bound; the last bucket counts everything above.
pub const HIST_BUCKETS: usize = 32;
/// Upper bound of bucket 0 in nanoseconds.
pub const HIST_FIRST_BOUND_NS: u64 = 64;
/// Histogram: number of samples (atomic u64), after the buckets.
pub const HIST_COUNT_OFF: usize = HIST_BUCKETS * 8;
/// Histogram: sum of the samples in nanoseconds (atomic u64).
pub const HIST_SUM_OFF: usize = HIST_COUNT_OFF + 8;
/// One append in this many (per thread, starting with the first) is timed
/// into the histogram.
pub const LATENCY_SAMPLE_EVERY: u32 = 64;

/// Control: first consumer-group slot.
pub const CTL_GROUPS_OFF: usize = 4096;
/// Number of consumer-group slots. Slot 0 is the default group.
pub const GROUP_SLOTS: usize = 64;
/// Size of a consumer-group slot.
pub const GROUP_SLOT_LEN: usize = 128;
/// Control: first named-tailer slot.
pub const CTL_TAILERS_OFF: usize = CTL_GROUPS_OFF + GROUP_SLOTS * GROUP_SLOT_LEN;
/// Number of named-tailer slots.
pub const TAILER_SLOTS: usize = 64;
/// Size of a named-tailer slot.
pub const TAILER_SLOT_LEN: usize = 128;
/// Control: first replication-peer slot (used by the replication layer).
pub const CTL_PEERS_OFF: usize = CTL_TAILERS_OFF + TAILER_SLOTS * TAILER_SLOT_LEN;
/// Number of replication-peer slots.
pub const PEER_SLOTS: usize = 16;
/// Size of a replication-peer slot.
pub const PEER_SLOT_LEN: usize = 128;

// Slot layout shared by groups, tailers and peers.
/// Slot: state (atomic u32): [`SLOT_FREE`], [`SLOT_BUSY`] or [`SLOT_ACTIVE`].
pub const SLOT_STATE_OFF: usize = 0;
/// Slot: name length in bytes (u32).
pub const SLOT_NAME_LEN_OFF: usize = 4;
/// Slot: name bytes (UTF-8).
pub const SLOT_NAME_OFF: usize = 8;
/// Longest slot name in bytes.
pub const SLOT_NAME_MAX: usize = 48;
/// Slot: position (atomic u64): a group's cursor, a tailer's next read, a peer's acked position.
pub const SLOT_POSITION_OFF: usize = 64;
/// Slot: counter (atomic u64): messages dequeued by a group; sessions a
/// replication peer has established.
pub const SLOT_COUNT_OFF: usize = 72;
/// Peer slot: link state (atomic u32): [`LINK_UNKNOWN`], [`LINK_CONNECTED`]
/// or [`LINK_DISCONNECTED`], written by the process serving the peer.
pub const SLOT_LINK_OFF: usize = 80;
/// Peer slot: Unix time in nanoseconds of the peer's last acknowledgement
/// (atomic u64).
pub const SLOT_ACKED_AT_OFF: usize = 88;
/// Peer slot: Unix time in nanoseconds of the link state's last change
/// (atomic u64; 0: not recorded, as in files of older builds). Peer expiry
/// counts a disconnected peer's idle time from the later of this and its
/// last acknowledgement.
pub const SLOT_LINK_AT_OFF: usize = 96;
/// Link state: never seen since the slot was created.
pub const LINK_UNKNOWN: u32 = 0;
/// Link state: a replication session with the peer is established.
pub const LINK_CONNECTED: u32 = 1;
/// Link state: the last session ended.
pub const LINK_DISCONNECTED: u32 = 2;
/// Slot state: unused.
pub const SLOT_FREE: u32 = 0;
/// Slot state: being initialised by one process.
pub const SLOT_BUSY: u32 = 1;
/// Slot state: in use.
pub const SLOT_ACTIVE: u32 = 2;
/// Name of the default consumer group (slot 0).
pub const DEFAULT_GROUP: &str = "default";

/// Rounds `n` up to the frame alignment.
#[inline]
pub const fn align_frame(n: u64) -> u64 {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

// Compile-time checks that the layout is consistent.
const _: () = {
    assert!(CTL_PEERS_OFF + PEER_SLOTS * PEER_SLOT_LEN <= CONTROL_SIZE);
    assert!(CTL_HIGH_SEGMENT_OFF + 8 <= CTL_FULL_REJECTIONS_OFF);
    assert!(CTL_FULL_REJECTIONS_OFF + 8 <= CTL_ENQUEUE_LATENCY_OFF);
    assert!(CTL_ENQUEUE_LATENCY_OFF + HIST_SUM_OFF + 8 <= CTL_SYNC_WAIT_OFF);
    assert!(CTL_SYNC_WAIT_OFF + HIST_SUM_OFF + 8 <= CTL_GROUPS_OFF);
    assert!(SLOT_NAME_OFF + SLOT_NAME_MAX <= SLOT_POSITION_OFF);
    assert!(SLOT_COUNT_OFF + 8 <= GROUP_SLOT_LEN);
    assert!(SLOT_COUNT_OFF + 8 <= SLOT_LINK_OFF);
    assert!(SLOT_LINK_OFF + 4 <= SLOT_ACKED_AT_OFF);
    assert!(SLOT_ACKED_AT_OFF + 8 <= PEER_SLOT_LEN);
    assert!(SEGMENT_HEADER_LEN % FRAME_ALIGN == 0);
    assert!(SEG_QUEUE_ID_OFF + 8 <= SEGMENT_HEADER_LEN as usize);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align() {
        assert_eq!(align_frame(0), 0);
        assert_eq!(align_frame(1), 8);
        assert_eq!(align_frame(16), 16);
        assert_eq!(align_frame(17), 24);
    }
}
