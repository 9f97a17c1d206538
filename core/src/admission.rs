//! Admission: whether jobs entering a queue fit, and where they go when it is full. Pure:
//! the store reads the queues' settings and how full they are, asks `decide`, and carries
//! out the plan (writes the jobs where it says, evicts what it says, refuses the rest).
//! Nothing here reads or writes anything, and there is no clock.
//!
//! A queue's `max_size` bounds the jobs *waiting* in it: ready or scheduled. What the
//! limit means depends on how a job enters (`EntryKind`):
//! - a **submission** must fit, or it follows the queue's overflow policy: `reject`,
//!   `redirect` to the overflow queue (a chain of at most `MAX_REDIRECTS` hops, never
//!   visiting a queue twice), or `evict_lowest`, which displaces the lowest-priority ready
//!   job, but only one whose priority is lower than the newcomer's: a job of equal or
//!   higher priority is never evicted, and the newcomer is rejected instead;
//! - a **rerun** by hand (a redrive of a dead letter, a retry of a finished job) must fit
//!   too, but is never redirected and never evicts anything: a full queue refuses it and
//!   the job stays as it was, to be rerun once there is room;
//! - a job **returning** to the queue that admitted it (the retry of a failed attempt, the
//!   promotion of a scheduled job when its time comes) keeps its place and is never
//!   refused. A scheduled job is counted from its admission, so its promotion does not
//!   change the count; a running job is not counted, so its automatic retry may take a
//!   queue past `max_size` by at most the number of its jobs in flight. A job accepted is
//!   never lost to a limit that filled up while it ran.
//!
//! Tenant quotas will join as one more input of `Admission` (each tenant's usage and
//! quota, and the tenant of each entry), checked before the queue's limit, with a
//! rejection of their own.

use std::collections::{BTreeMap, HashMap};

use crate::queue::{OverflowPolicy, QueueSettings};

/// How many redirects a submission may follow before it is rejected.
pub const MAX_REDIRECTS: usize = 4;
/// `Retry-After` for a job refused by a full queue.
pub const FULL_QUEUE_RETRY_AFTER_SECONDS: i64 = 5;

/// One queue as admission sees it: its limit and overflow policy, and how full it is.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueLoad {
    pub name: String,
    /// Most jobs waiting at once; unbounded when absent.
    pub max_size: Option<i64>,
    pub overflow: OverflowPolicy,
    pub overflow_queue: Option<String>,
    /// Jobs waiting in it now (ready or scheduled); counted up to `max_size` is enough.
    pub size: i64,
    /// Priorities of the ready jobs `evict_lowest` may displace, in eviction order (lowest
    /// priority first, newest first among equals). The store need read only as many as the
    /// entries could take; empty for other policies.
    pub evictable: Vec<i16>,
}

impl QueueLoad {
    pub fn new(settings: &QueueSettings, size: i64, evictable: Vec<i16>) -> Self {
        Self {
            name: settings.name.clone(),
            max_size: settings.max_size,
            overflow: settings.overflow,
            overflow_queue: settings.overflow_queue.clone(),
            size,
            evictable,
        }
    }

    fn has_room(&self, size: i64) -> bool {
        self.max_size.is_none_or(|max_size| size < max_size)
    }
}

/// How a job enters its queue; see the module documentation for what the limit means to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A new job, submitted by a client.
    Submission,
    /// A finished job run again by hand: a redrive or a retry.
    Rerun,
    /// An admitted job coming back: a retry after a failed attempt, a due scheduled job.
    Return,
}

/// One job entering a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The queue the job names.
    pub queue: String,
    pub priority: i16,
    pub kind: EntryKind,
}

/// Everything admission decides from.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    /// Every queue the entries name or may be redirected to. An entry naming a queue not
    /// here (one that no longer exists), or redirected to one, is rejected.
    pub queues: &'a [QueueLoad],
    /// The jobs, in the order they are to be admitted: earlier ones take the room first.
    pub entries: &'a [Entry],
}

/// What becomes of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admitted to the queue it named.
    Accept { queue: String },
    /// Admitted to `queue`, the end of the redirect chain starting at `from`, the queue it named.
    Redirect { from: String, queue: String },
    /// Admitted to the full `queue` (the one it named, or the end of a redirect chain from
    /// `from`) in the place of the lowest-priority ready job there, which is evicted.
    Evict { from: Option<String>, queue: String },
    /// Refused by the full `queue`; the client may try again after `retry_after_seconds`.
    Reject { queue: String, retry_after_seconds: i64 },
}

impl Decision {
    /// The queue the job is admitted to; `None` when rejected.
    pub fn queue(&self) -> Option<&str> {
        match self {
            Decision::Accept { queue } | Decision::Redirect { queue, .. } | Decision::Evict { queue, .. } => {
                Some(queue)
            }
            Decision::Reject { .. } => None,
        }
    }

    /// The queue the job named, when it was admitted elsewhere.
    pub fn redirected_from(&self) -> Option<&str> {
        match self {
            Decision::Redirect { from, .. } | Decision::Evict { from: Some(from), .. } => Some(from),
            _ => None,
        }
    }

    fn reject(queue: &str) -> Self {
        Decision::Reject { queue: queue.to_owned(), retry_after_seconds: FULL_QUEUE_RETRY_AFTER_SECONDS }
    }
}

/// A refusal, summed up: the first rejecting queue and how many entries it refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub queue: String,
    pub retry_after_seconds: i64,
    pub jobs: usize,
}

/// What the store is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One decision per entry, in the entries' order.
    pub decisions: Vec<Decision>,
    /// For each queue that evicts, how many jobs: the first that many of its `evictable`.
    pub evictions: BTreeMap<String, usize>,
}

impl Plan {
    /// The first rejection, if any: a submission is all or nothing, so one refused job
    /// refuses it whole.
    pub fn rejection(&self) -> Option<Rejection> {
        let (queue, retry_after_seconds) = self.decisions.iter().find_map(|decision| match decision {
            Decision::Reject { queue, retry_after_seconds } => Some((queue, *retry_after_seconds)),
            _ => None,
        })?;
        let jobs =
            self.decisions.iter().filter(|d| matches!(d, Decision::Reject { queue: q, .. } if q == queue)).count();
        Some(Rejection { queue: queue.clone(), retry_after_seconds, jobs })
    }
}

/// How full a queue is while the entries are being decided.
struct Room<'a> {
    load: &'a QueueLoad,
    size: i64,
    evicted: usize,
    /// Priorities of the entries admitted by evicting, lowest first.
    evicting: Vec<i16>,
}

/// Decides each entry in turn, each seeing the room the ones before it took.
pub fn decide(admission: &Admission<'_>) -> Plan {
    let mut rooms: HashMap<&str, Room<'_>> = admission
        .queues
        .iter()
        .map(|load| (load.name.as_str(), Room { load, size: load.size, evicted: 0, evicting: Vec::new() }))
        .collect();
    let decisions = admission.entries.iter().map(|entry| decide_one(&mut rooms, entry)).collect();
    let evictions = rooms
        .into_iter()
        .filter(|(_, room)| room.evicted > 0)
        .map(|(name, room)| (name.to_owned(), room.evicted))
        .collect();
    Plan { decisions, evictions }
}

fn decide_one(rooms: &mut HashMap<&str, Room<'_>>, entry: &Entry) -> Decision {
    if entry.kind == EntryKind::Return {
        return Decision::Accept { queue: entry.queue.clone() };
    }
    let admitted = |queue: &str, evicts: bool, hops: usize| {
        let from = (hops > 0).then(|| entry.queue.clone());
        match (evicts, from) {
            (true, from) => Decision::Evict { from, queue: queue.to_owned() },
            (false, Some(from)) => Decision::Redirect { from, queue: queue.to_owned() },
            (false, None) => Decision::Accept { queue: queue.to_owned() },
        }
    };
    let mut visited: Vec<&str> = vec![entry.queue.as_str()];
    let mut current = entry.queue.as_str();
    loop {
        let hops = visited.len() - 1;
        let Some(room) = rooms.get_mut(current) else { return Decision::reject(current) };
        if room.load.has_room(room.size) {
            room.size += 1;
            return admitted(current, false, hops);
        }
        if entry.kind == EntryKind::Rerun {
            return Decision::reject(current);
        }
        match room.load.overflow {
            OverflowPolicy::Reject => return Decision::reject(current),
            OverflowPolicy::EvictLowest => {
                // The newcomers that evict displace the lowest jobs: it works when, both
                // sorted, each newcomer outranks the job it displaces (so a batch [9, 1]
                // facing [0, 3] fits: 1 displaces 0, 9 displaces 3).
                let mut evicting = room.evicting.clone();
                let at = evicting.partition_point(|&p| p <= entry.priority);
                evicting.insert(at, entry.priority);
                let fits = evicting.len() <= room.load.evictable.len()
                    && evicting.iter().zip(&room.load.evictable).all(|(newcomer, victim)| victim < newcomer);
                if fits {
                    room.evicting = evicting;
                    room.evicted += 1;
                    return admitted(current, true, hops);
                }
                return Decision::reject(current);
            }
            OverflowPolicy::Redirect => {
                let load = room.load;
                let target = load
                    .overflow_queue
                    .as_deref()
                    .filter(|target| hops < MAX_REDIRECTS && !visited.contains(target) && rooms.contains_key(target));
                let Some(target) = target else { return Decision::reject(current) };
                visited.push(target);
                current = target;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, max_size: Option<i64>, size: i64) -> QueueLoad {
        QueueLoad {
            name: name.to_owned(),
            max_size,
            overflow: OverflowPolicy::Reject,
            overflow_queue: None,
            size,
            evictable: Vec::new(),
        }
    }

    fn redirecting(name: &str, max_size: i64, size: i64, target: &str) -> QueueLoad {
        QueueLoad {
            overflow: OverflowPolicy::Redirect,
            overflow_queue: Some(target.to_owned()),
            ..load(name, Some(max_size), size)
        }
    }

    fn evicting(name: &str, max_size: i64, evictable: &[i16]) -> QueueLoad {
        QueueLoad {
            overflow: OverflowPolicy::EvictLowest,
            evictable: evictable.to_vec(),
            ..load(name, Some(max_size), max_size)
        }
    }

    fn entries(kind: EntryKind, queue: &str, priorities: &[i16]) -> Vec<Entry> {
        priorities.iter().map(|&priority| Entry { queue: queue.to_owned(), priority, kind }).collect()
    }

    fn submissions(queue: &str, count: usize) -> Vec<Entry> {
        entries(EntryKind::Submission, queue, &vec![5; count])
    }

    fn decide_for(queues: &[QueueLoad], entries: &[Entry]) -> Plan {
        decide(&Admission { queues, entries })
    }

    fn accept(queue: &str) -> Decision {
        Decision::Accept { queue: queue.to_owned() }
    }

    fn reject(queue: &str) -> Decision {
        Decision::Reject { queue: queue.to_owned(), retry_after_seconds: FULL_QUEUE_RETRY_AFTER_SECONDS }
    }

    fn redirect(from: &str, queue: &str) -> Decision {
        Decision::Redirect { from: from.to_owned(), queue: queue.to_owned() }
    }

    fn evict(queue: &str) -> Decision {
        Decision::Evict { from: None, queue: queue.to_owned() }
    }

    #[test]
    fn jobs_with_room_are_accepted_where_they_asked() {
        let queues = [load("open", None, 1_000), load("bounded", Some(3), 1)];
        let mut jobs = submissions("open", 2);
        jobs.extend(submissions("bounded", 2));
        let plan = decide_for(&queues, &jobs);
        assert_eq!(plan.decisions, [accept("open"), accept("open"), accept("bounded"), accept("bounded")]);
        assert_eq!((plan.rejection(), plan.evictions.len()), (None, 0));
    }

    #[test]
    fn a_full_rejecting_queue_refuses_what_does_not_fit() {
        let queues = [load("strict", Some(2), 1)];
        let plan = decide_for(&queues, &submissions("strict", 3));
        assert_eq!(plan.decisions, [accept("strict"), reject("strict"), reject("strict")]);
        let rejection = plan.rejection().expect("rejected");
        assert_eq!(
            rejection,
            Rejection { queue: "strict".into(), retry_after_seconds: FULL_QUEUE_RETRY_AFTER_SECONDS, jobs: 2 }
        );
    }

    #[test]
    fn a_size_over_the_limit_is_full() {
        let plan = decide_for(&[load("lowered", Some(2), 5)], &submissions("lowered", 1));
        assert_eq!(plan.decisions, [reject("lowered")]);
    }

    #[test]
    fn redirects_follow_the_chain_to_the_first_queue_with_room() {
        let queues = [redirecting("a", 1, 0, "b"), redirecting("b", 1, 1, "c"), load("c", Some(2), 0)];
        let plan = decide_for(&queues, &submissions("a", 4));
        assert_eq!(plan.decisions, [accept("a"), redirect("a", "c"), redirect("a", "c"), reject("c")]);
        assert_eq!(plan.decisions[1].redirected_from(), Some("a"));
        assert_eq!(plan.rejection().map(|r| (r.queue, r.jobs)), Some(("c".to_owned(), 1)));
    }

    #[test]
    fn a_redirect_chain_that_cycles_is_rejected_where_it_would_turn_back() {
        let queues = [redirecting("a", 1, 1, "b"), redirecting("b", 1, 1, "a")];
        assert_eq!(decide_for(&queues, &submissions("a", 1)).decisions, [reject("b")]);
    }

    #[test]
    fn a_redirect_chain_longer_than_the_limit_is_rejected() {
        let names: Vec<String> = (0..=MAX_REDIRECTS + 1).map(|i| format!("q{i}")).collect();
        let mut queues: Vec<QueueLoad> = names.windows(2).map(|pair| redirecting(&pair[0], 1, 1, &pair[1])).collect();
        queues.push(load(&names[MAX_REDIRECTS + 1], None, 0));
        // `MAX_REDIRECTS` hops reach q4, which is full: the fifth hop is not taken.
        let plan = decide_for(&queues, &submissions("q0", 1));
        assert_eq!(plan.decisions, [reject(&names[MAX_REDIRECTS])]);
        // From q1, the same chain is one hop shorter: it ends in the open queue.
        let plan = decide_for(&queues, &submissions("q1", 1));
        assert_eq!(plan.decisions, [redirect("q1", &names[MAX_REDIRECTS + 1])]);
    }

    #[test]
    fn a_redirect_to_a_queue_that_no_longer_exists_is_rejected() {
        let queues = [redirecting("a", 1, 1, "gone")];
        assert_eq!(decide_for(&queues, &submissions("a", 1)).decisions, [reject("a")]);
        assert_eq!(decide_for(&queues, &submissions("unknown", 1)).decisions, [reject("unknown")]);
    }

    #[test]
    fn an_evicting_queue_displaces_lower_priority_jobs_for_a_newcomer() {
        let queues = [evicting("e", 3, &[1, 2, 7])];
        let plan = decide_for(&queues, &entries(EntryKind::Submission, "e", &[5, 3]));
        assert_eq!(plan.decisions, [evict("e"), evict("e")]);
        assert_eq!(plan.evictions, BTreeMap::from([("e".to_owned(), 2)]));
    }

    #[test]
    fn newcomers_are_paired_with_the_jobs_they_outrank_whatever_their_order() {
        let queues = [evicting("e", 2, &[0, 3])];
        let plan = decide_for(&queues, &entries(EntryKind::Submission, "e", &[9, 1]));
        assert_eq!(plan.decisions, [evict("e"), evict("e")]);
        assert_eq!(plan.evictions, BTreeMap::from([("e".to_owned(), 2)]));
        // [1, 1] cannot both go: only the job of priority 0 is below them.
        let plan = decide_for(&queues, &entries(EntryKind::Submission, "e", &[1, 1]));
        assert_eq!(plan.decisions, [evict("e"), reject("e")]);
    }

    #[test]
    fn an_evicting_queue_never_evicts_an_equal_or_higher_priority() {
        let queues = [evicting("e", 2, &[4, 6])];
        for priority in [1, 4] {
            let plan = decide_for(&queues, &entries(EntryKind::Submission, "e", &[priority]));
            assert_eq!(plan.decisions, [reject("e")], "priority {priority}");
            assert!(plan.evictions.is_empty());
        }
        // The first newcomer takes the only lower job; the second finds none left.
        let plan = decide_for(&queues, &entries(EntryKind::Submission, "e", &[5, 5]));
        assert_eq!(plan.decisions, [evict("e"), reject("e")]);
        // Nothing evictable at all (say, every waiting job is scheduled).
        let plan = decide_for(&[evicting("e", 2, &[])], &entries(EntryKind::Submission, "e", &[9]));
        assert_eq!(plan.decisions, [reject("e")]);
    }

    #[test]
    fn a_batch_fills_the_room_first_and_then_overflows() {
        let queues =
            [QueueLoad { size: 1, ..evicting("e", 2, &[0]) }, redirecting("r", 2, 1, "spill"), load("spill", None, 0)];
        let mut jobs = entries(EntryKind::Submission, "e", &[3, 3]);
        jobs.extend(submissions("r", 2));
        let plan = decide_for(&queues, &jobs);
        assert_eq!(plan.decisions, [accept("e"), evict("e"), accept("r"), redirect("r", "spill")]);
        assert_eq!(plan.rejection(), None);
    }

    #[test]
    fn a_redirect_may_end_in_an_eviction() {
        let queues = [redirecting("a", 1, 1, "e"), evicting("e", 1, &[0])];
        let plan = decide_for(&queues, &submissions("a", 1));
        assert_eq!(plan.decisions, [Decision::Evict { from: Some("a".into()), queue: "e".into() }]);
        assert_eq!(plan.decisions[0].redirected_from(), Some("a"));
    }

    #[test]
    fn a_rerun_must_fit_and_never_redirects_or_evicts() {
        let queues = [
            load("strict", Some(2), 1),
            redirecting("r", 1, 1, "spill"),
            load("spill", None, 0),
            evicting("e", 1, &[0]),
        ];
        let mut jobs = entries(EntryKind::Rerun, "strict", &[5, 5]);
        jobs.extend(entries(EntryKind::Rerun, "r", &[5]));
        jobs.extend(entries(EntryKind::Rerun, "e", &[9]));
        let plan = decide_for(&queues, &jobs);
        assert_eq!(plan.decisions, [accept("strict"), reject("strict"), reject("r"), reject("e")]);
        assert!(plan.evictions.is_empty());
    }

    #[test]
    fn a_returning_job_keeps_its_place() {
        let queues = [load("strict", Some(1), 1)];
        let mut jobs = entries(EntryKind::Return, "strict", &[5]);
        jobs.extend(submissions("strict", 1));
        let plan = decide_for(&queues, &jobs);
        assert_eq!(plan.decisions, [accept("strict"), reject("strict")]);
        // Even when its queue is not among the inputs: it needs nothing from them.
        assert_eq!(decide_for(&[], &entries(EntryKind::Return, "q", &[5])).decisions, [accept("q")]);
    }
}
