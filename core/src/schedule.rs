//! Job schedules as pure decisions: the schedule spec (a cron expression in a time zone,
//! the job to submit at each fire, what to do when fires overlap or were missed), its
//! validation, the next fire times after an instant, and `due`: given when the schedule
//! last considered its fire times, `now` and whether the previous fire's job is still
//! active, which fire times to submit, which to record as skipped, and when the next one
//! is due. It never looks at a clock or a database: the `Schedules` loop gathers the
//! inputs (with the database's `now()`) and carries the plan out.
//!
//! The rules:
//! - The candidates are the fire times strictly after `fires_after` (the schedule's
//!   creation, its last resume, or the last fire time a tick considered) and at most `now`.
//! - Missed fires: `skip` drops them, submitting only the most recent candidate and only
//!   when it is less than `SKIP_GRACE_SECONDS` late (the lateness of a tick in a running
//!   replica; the most recent fire time is always less than one interval late, so the
//!   interval cannot tell a missed fire from an on-time one); `run_once` submits the most
//!   recent candidate however late; `run_all` submits every candidate, the most recent `max_missed_fires`
//!   of them when there are more.
//! - Overlap, when the previous fire's job is still queued, scheduled or running: `allow`
//!   submits anyway; `skip` records the fire as skipped and submits nothing;
//!   `cancel_previous` cancels that job, then submits. With `skip` or `cancel_previous` a
//!   tick submits at most one job (the most recent fire); earlier ones it records as
//!   skipped, since they would overlap the one it submits.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::calendar::{parse_cron, parse_zone};
use crate::names::check_resource_name;
use crate::{JobSpec, ValidJob, ValidationErrors};

/// How late the most recent fire may be under `skip` and still be submitted.
pub const SKIP_GRACE_SECONDS: i64 = 30;
/// The most fires `run_all` catches up in one go.
pub const MAX_MISSED_FIRES: u32 = 1000;

/// A cron schedule that submits a job at each fire time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique within the tenant; 1–63 characters, as resource names.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub name: String,
    /// When to fire: `sec min hour day-of-month month day-of-week [year]`, or five fields
    /// without seconds (e.g. `0 8 * * Mon-Fri`; `* * * * * *` fires every second).
    #[schema(min_length = 9, max_length = 200)]
    pub cron: String,
    /// The IANA time zone the expression is read in (default `UTC`).
    #[serde(default = "utc")]
    #[schema(min_length = 1, max_length = 64)]
    pub time_zone: String,
    /// The job submitted at each fire, as `POST /jobs` takes it.
    pub job: JobSpec,
    /// What a fire does while the previous fire's job is still queued or running.
    #[serde(default)]
    pub overlap: OverlapPolicy,
    /// What happens to fire times that passed while no replica could fire them.
    #[serde(default)]
    pub missed_fires: MissedFirePolicy,
    /// The most missed fires `run_all` submits at once (the most recent ones).
    #[serde(default = "default_max_missed_fires")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_missed_fires: u32,
}

fn utc() -> String {
    "UTC".to_owned()
}

fn default_max_missed_fires() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Submit whatever the previous job is doing.
    #[default]
    Allow,
    /// Skip the fire while the previous job is active.
    Skip,
    /// Cancel the previous job if it is active, then submit.
    CancelPrevious,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissedFirePolicy {
    /// Drop missed fires: only the most recent, if it is less than 30 seconds late.
    #[default]
    Skip,
    /// One fire for all the missed ones.
    RunOnce,
    /// Every missed fire, up to `max_missed_fires`.
    RunAll,
}

/// A spec that passed validation: its expression and zone parsed, its job checked.
#[derive(Debug, Clone)]
pub struct ValidSchedule {
    pub spec: ScheduleSpec,
    pub job: ValidJob,
    cron: cron::Schedule,
    zone: chrono_tz::Tz,
}

impl ScheduleSpec {
    /// Checks every field; errors are named by field (`cron`, `time_zone`,
    /// `job.command.argv`). `now` is what the job's own validation compares to. Whether
    /// the job's queue exists is the control plane's to check (it refuses a schedule
    /// naming an unknown queue as it refuses such a submission).
    pub fn validate(&self, now: DateTime<Utc>) -> Result<ValidSchedule, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        if let Err(message) = check_resource_name(&self.name) {
            errors.add("name", message);
        }
        let cron = if !(9..=200).contains(&self.cron.len()) {
            errors.add("cron", "must be 9 to 200 characters");
            None
        } else {
            parse_cron(&self.cron).map_err(|message| errors.add("cron", message)).ok()
        };
        let zone = parse_zone(&self.time_zone).map_err(|message| errors.add("time_zone", message)).ok();
        if !(1..=MAX_MISSED_FIRES).contains(&self.max_missed_fires) {
            errors.add(
                "max_missed_fires",
                format!("must be between 1 and {MAX_MISSED_FIRES}, got {}", self.max_missed_fires),
            );
        }
        let job = self.job.validate(now).map_err(|job_errors| errors.merge_prefixed("job.", job_errors)).ok();
        if let (Some(cron), Some(zone)) = (&cron, zone) {
            if cron.after(&now.with_timezone(&zone)).next().is_none() {
                errors.add("cron", "never fires after now");
            }
        }
        match (errors.is_empty(), cron, zone, job) {
            (true, Some(cron), Some(zone), Some(job)) => Ok(ValidSchedule { spec: self.clone(), job, cron, zone }),
            _ => Err(errors),
        }
    }
}

/// What a tick knows about the previous fire's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    /// No earlier fire, or its job has finished (or was never created).
    Idle,
    /// Its job is queued, scheduled or running.
    Active,
}

/// Why a fire time was recorded without a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The previous job was still active (`overlap: skip`), or a later fire in the same
    /// tick is the one submitted.
    Overlap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireAction {
    Submit,
    Skip(SkipReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fire {
    pub at: DateTime<Utc>,
    pub action: FireAction,
}

/// What a tick does for one schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// In increasing time order. Each is recorded once (schedule, time); `Submit` ones
    /// with a job.
    pub fires: Vec<Fire>,
    /// Cancel the previous fire's job before submitting (`overlap: cancel_previous`).
    pub cancel_previous: bool,
    /// The new `fires_after`: the last fire time considered (unchanged if none was).
    pub fires_after: DateTime<Utc>,
    /// The first fire time after `now`; `None` when the expression never fires again.
    pub next_fire_at: Option<DateTime<Utc>>,
}

impl ValidSchedule {
    /// Up to `count` fire times strictly after `after`, in increasing order.
    pub fn next_fires(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut fires: Vec<DateTime<Utc>> = Vec::with_capacity(count);
        for fire in self.cron.after(&after.with_timezone(&self.zone)) {
            let fire = fire.with_timezone(&Utc);
            // An ambiguous local time (a clock going back) yields two instants in order;
            // anything not after the last one is dropped.
            if fires.last().is_some_and(|last| fire <= *last) || fire <= after {
                continue;
            }
            fires.push(fire);
            if fires.len() == count {
                break;
            }
        }
        fires
    }

    /// The fire times in `(after, until]`, the most recent `limit` of them, in increasing
    /// order. Walks back from `until`, so a long gap costs `limit` steps, not one per
    /// missed fire.
    fn recent_fires(&self, after: DateTime<Utc>, until: DateTime<Utc>, limit: usize) -> Vec<DateTime<Utc>> {
        let start = (until + Duration::seconds(1)).with_timezone(&self.zone);
        let mut fires: Vec<DateTime<Utc>> = Vec::new();
        for fire in self.cron.after(&start).rev() {
            let fire = fire.with_timezone(&Utc);
            if fire > until || fires.last().is_some_and(|last| fire >= *last) {
                continue;
            }
            if fire <= after || fires.len() == limit {
                break;
            }
            fires.push(fire);
        }
        fires.reverse();
        fires
    }

    /// Which fires a tick at `now` submits or skips, given the last time considered
    /// (`fires_after`) and the previous fire's job.
    pub fn due(&self, fires_after: DateTime<Utc>, now: DateTime<Utc>, previous: Previous) -> Plan {
        let limit = match self.spec.missed_fires {
            MissedFirePolicy::RunAll => self.spec.max_missed_fires.clamp(1, MAX_MISSED_FIRES) as usize,
            MissedFirePolicy::Skip | MissedFirePolicy::RunOnce => 1,
        };
        let mut due = self.recent_fires(fires_after, now, limit);
        let next_fire_at = self.next_fires(now, 1).first().copied();
        let considered = due.last().copied().map_or(fires_after, |last| last.max(fires_after));
        if self.spec.missed_fires == MissedFirePolicy::Skip {
            if let Some(&latest) = due.last() {
                if now - latest >= Duration::seconds(SKIP_GRACE_SECONDS) {
                    due.clear();
                }
            }
        }
        let single_job = self.spec.overlap != OverlapPolicy::Allow;
        let blocked = self.spec.overlap == OverlapPolicy::Skip && previous == Previous::Active;
        let last = due.len().saturating_sub(1);
        let fires = due
            .iter()
            .enumerate()
            .map(|(index, &at)| {
                let action = if blocked || (single_job && index < last) {
                    FireAction::Skip(SkipReason::Overlap)
                } else {
                    FireAction::Submit
                };
                Fire { at, action }
            })
            .collect::<Vec<_>>();
        let submits = fires.iter().any(|fire| fire.action == FireAction::Submit);
        let cancel_previous =
            self.spec.overlap == OverlapPolicy::CancelPrevious && previous == Previous::Active && submits;
        Plan { fires, cancel_previous, fires_after: considered, next_fire_at }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn spec(cron: &str) -> ScheduleSpec {
        serde_json::from_value(serde_json::json!({
            "name": "nightly",
            "cron": cron,
            "job": {"command": {"argv": ["true"]}},
        }))
        .expect("a value")
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, h, m, s).single().expect("a time")
    }

    fn valid(spec: &ScheduleSpec) -> ValidSchedule {
        spec.validate(at(0, 0, 0)).expect("a value")
    }

    fn fields(spec: &ScheduleSpec) -> Vec<String> {
        spec.validate(at(0, 0, 0)).expect_err("an error").errors().iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn defaults_are_utc_allow_skip_and_a_hundred() {
        let spec = spec("0 3 * * *");
        assert_eq!(spec.time_zone, "UTC");
        assert_eq!(spec.overlap, OverlapPolicy::Allow);
        assert_eq!(spec.missed_fires, MissedFirePolicy::Skip);
        assert_eq!(spec.max_missed_fires, 100);
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(fields(&ScheduleSpec { cron: "not a cron".into(), ..spec("0 3 * * *") }), ["cron"]);
        assert_eq!(fields(&ScheduleSpec { time_zone: "Mars/Olympus".into(), ..spec("0 3 * * *") }), ["time_zone"]);
        assert_eq!(fields(&ScheduleSpec { max_missed_fires: 0, ..spec("0 3 * * *") }), ["max_missed_fires"]);
        assert_eq!(fields(&ScheduleSpec { name: "Bad Name".into(), ..spec("0 3 * * *") }), ["name"]);
        let mut no_argv = spec("0 3 * * *");
        no_argv.job.command.argv.clear();
        assert_eq!(fields(&no_argv), ["job.command.argv"]);
        // An expression whose only year has passed never fires.
        assert_eq!(fields(&spec("0 0 0 1 1 * 2020")), ["cron"]);
        let unknown = serde_json::from_value::<ScheduleSpec>(serde_json::json!({
            "name": "x", "cron": "* * * * * *", "job": {"command": {"argv": ["true"]}}, "color": "red"
        }));
        assert!(unknown.is_err());
    }

    #[test]
    fn next_fires_follow_the_time_zone() {
        let madrid = ScheduleSpec { time_zone: "Europe/Madrid".into(), ..spec("0 8 * * *") };
        let fires = valid(&madrid).next_fires(at(0, 0, 0), 2);
        // 08:00 in Madrid is 07:00 UTC in December.
        assert_eq!(fires, [at(7, 0, 0), at(7, 0, 0) + Duration::days(1)]);
        let every_second = valid(&spec("* * * * * *"));
        assert_eq!(every_second.next_fires(at(1, 0, 0), 3), [at(1, 0, 1), at(1, 0, 2), at(1, 0, 3)]);
    }

    fn plan(spec: &ScheduleSpec, fires_after: DateTime<Utc>, now: DateTime<Utc>, previous: Previous) -> Plan {
        valid(spec).due(fires_after, now, previous)
    }

    fn submitted(plan: &Plan) -> Vec<DateTime<Utc>> {
        plan.fires.iter().filter(|f| f.action == FireAction::Submit).map(|f| f.at).collect()
    }

    #[test]
    fn nothing_is_due_before_the_first_fire() {
        let plan = plan(&spec("0 * * * * *"), at(1, 0, 0), at(1, 0, 30), Previous::Idle);
        assert!(plan.fires.is_empty());
        assert_eq!(plan.fires_after, at(1, 0, 0));
        assert_eq!(plan.next_fire_at, Some(at(1, 1, 0)));
    }

    #[test]
    fn an_on_time_fire_is_submitted_under_every_missed_fire_policy() {
        for missed_fires in [MissedFirePolicy::Skip, MissedFirePolicy::RunOnce, MissedFirePolicy::RunAll] {
            let spec = ScheduleSpec { missed_fires, ..spec("0 * * * * *") };
            let plan = plan(&spec, at(1, 0, 30), at(1, 1, 0), Previous::Idle);
            assert_eq!(submitted(&plan), [at(1, 1, 0)], "{missed_fires:?}");
            assert_eq!(plan.fires_after, at(1, 1, 0));
            assert_eq!(plan.next_fire_at, Some(at(1, 2, 0)));
        }
    }

    #[test]
    fn missed_fires_per_policy() {
        // Hourly, last considered at 01:00, now 04:30: 02:00, 03:00 and 04:00 were missed.
        let hourly =
            |missed_fires, max_missed_fires| ScheduleSpec { missed_fires, max_missed_fires, ..spec("0 0 * * * *") };
        let cases = [
            // The most recent is 30 minutes late: skip runs nothing.
            (hourly(MissedFirePolicy::Skip, 100), at(4, 30, 0), vec![]),
            // Ten seconds late: skip runs the most recent alone.
            (hourly(MissedFirePolicy::Skip, 100), at(4, 0, 10), vec![at(4, 0, 0)]),
            (hourly(MissedFirePolicy::RunOnce, 100), at(4, 30, 0), vec![at(4, 0, 0)]),
            (hourly(MissedFirePolicy::RunAll, 100), at(4, 30, 0), vec![at(2, 0, 0), at(3, 0, 0), at(4, 0, 0)]),
            (hourly(MissedFirePolicy::RunAll, 2), at(4, 30, 0), vec![at(3, 0, 0), at(4, 0, 0)]),
        ];
        for (spec, now, expected) in cases {
            let plan = plan(&spec, at(1, 0, 0), now, Previous::Idle);
            assert_eq!(submitted(&plan), expected, "{:?} at {now}", spec.missed_fires);
            assert!(plan.fires_after >= at(4, 0, 0), "every missed fire is considered");
        }
    }

    #[test]
    fn skip_submits_only_the_most_recent_fire() {
        let spec = spec("* * * * * *");
        // A tick five seconds after the last: four fires missed, the fifth on time.
        assert_eq!(submitted(&plan(&spec, at(1, 0, 0), at(1, 0, 5), Previous::Idle)), [at(1, 0, 5)]);
        assert_eq!(
            submitted(&plan(&spec, at(1, 0, 0), at(1, 0, 5) + Duration::milliseconds(300), Previous::Idle)),
            [at(1, 0, 5)]
        );
    }

    #[test]
    fn overlap_per_policy() {
        let run_all = |overlap| ScheduleSpec { overlap, missed_fires: MissedFirePolicy::RunAll, ..spec("* * * * * *") };
        let (after, now) = (at(1, 0, 0), at(1, 0, 3));
        let all = [at(1, 0, 1), at(1, 0, 2), at(1, 0, 3)];

        let allow = plan(&run_all(OverlapPolicy::Allow), after, now, Previous::Active);
        assert_eq!(submitted(&allow), all);
        assert!(!allow.cancel_previous);

        let skip_idle = plan(&run_all(OverlapPolicy::Skip), after, now, Previous::Idle);
        assert_eq!(submitted(&skip_idle), [at(1, 0, 3)]);
        assert_eq!(skip_idle.fires.len(), 3, "the earlier fires are recorded as skipped");
        let skip_active = plan(&run_all(OverlapPolicy::Skip), after, now, Previous::Active);
        assert!(submitted(&skip_active).is_empty());
        assert!(skip_active.fires.iter().all(|f| f.action == FireAction::Skip(SkipReason::Overlap)));
        assert!(!skip_active.cancel_previous);

        let cancel = plan(&run_all(OverlapPolicy::CancelPrevious), after, now, Previous::Active);
        assert_eq!(submitted(&cancel), [at(1, 0, 3)]);
        assert!(cancel.cancel_previous);
        let cancel_idle = plan(&run_all(OverlapPolicy::CancelPrevious), after, now, Previous::Idle);
        assert!(!cancel_idle.cancel_previous);
    }

    #[test]
    fn a_long_gap_costs_only_the_bound() {
        let spec = ScheduleSpec { missed_fires: MissedFirePolicy::RunAll, max_missed_fires: 5, ..spec("* * * * * *") };
        let now = at(1, 0, 0) + Duration::days(365);
        let plan = plan(&spec, at(1, 0, 0), now, Previous::Idle);
        assert_eq!(plan.fires.len(), 5);
        assert_eq!(plan.fires.last().expect("a value").at, now);
    }

    proptest! {
        /// Stepping a schedule with ticks at arbitrary moments: fires are real fire times,
        /// strictly increasing across ticks, never before creation nor after the tick, and
        /// never more than the bound per tick.
        #[test]
        fn ticks_fire_each_time_at_most_once(
            cron in prop::sample::select(vec!["* * * * * *", "*/7 * * * * *", "0 * * * * *", "0 */5 * * * *"]),
            missed_fires in prop::sample::select(vec![MissedFirePolicy::Skip, MissedFirePolicy::RunOnce, MissedFirePolicy::RunAll]),
            overlap in prop::sample::select(vec![OverlapPolicy::Allow, OverlapPolicy::Skip, OverlapPolicy::CancelPrevious]),
            bound in 1u32..50,
            steps in prop::collection::vec((0i64..400, any::<bool>()), 1..40),
        ) {
            let spec = ScheduleSpec { missed_fires, overlap, max_missed_fires: bound, ..spec(cron) };
            let schedule = valid(&spec);
            let created = at(1, 0, 0) + Duration::milliseconds(250);
            let (mut fires_after, mut now) = (created, created);
            let mut recorded: Vec<DateTime<Utc>> = Vec::new();
            for (advance, active) in steps {
                now += Duration::milliseconds(advance * 100 + 1);
                let previous = if active { Previous::Active } else { Previous::Idle };
                let plan = schedule.due(fires_after, now, previous);
                prop_assert!(plan.fires.len() <= bound as usize);
                for fire in &plan.fires {
                    prop_assert!(fire.at > created && fire.at <= now);
                    prop_assert!(recorded.last().is_none_or(|last| fire.at > *last));
                    recorded.push(fire.at);
                }
                prop_assert!(plan.next_fire_at.is_some_and(|next| next > now));
                prop_assert!(plan.fires_after >= fires_after && plan.fires_after <= now);
                fires_after = plan.fires_after;
            }
            // Every fire recorded is a real fire time.
            let all = schedule.recent_fires(created, now, usize::MAX);
            prop_assert!(recorded.iter().all(|fire| all.contains(fire)));
        }

        /// `run_all` with a bound above any tick's backlog records every fire time once.
        #[test]
        fn run_all_records_every_fire_time(
            steps in prop::collection::vec(0i64..30_000, 1..30),
        ) {
            let spec = ScheduleSpec { missed_fires: MissedFirePolicy::RunAll, max_missed_fires: 1000, ..spec("* * * * * *") };
            let schedule = valid(&spec);
            let created = at(1, 0, 0) + Duration::milliseconds(250);
            let (mut fires_after, mut now) = (created, created);
            let mut recorded: Vec<DateTime<Utc>> = Vec::new();
            for advance in steps {
                now += Duration::milliseconds(advance);
                let plan = schedule.due(fires_after, now, Previous::Idle);
                recorded.extend(plan.fires.iter().map(|fire| fire.at));
                fires_after = plan.fires_after;
            }
            let expected: Vec<DateTime<Utc>> = (1..)
                .map(|second| at(1, 0, 0) + Duration::seconds(second))
                .take_while(|fire| *fire <= now)
                .collect();
            prop_assert_eq!(recorded, expected);
        }
    }
}
