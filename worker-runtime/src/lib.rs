//! `hodei-worker`: the agent that runs on a worker machine. It talks to the Hodei API over
//! HTTP only and never holds database credentials.
//!
//! `run` registers with the registration token (receiving a worker id and a worker-scoped
//! token), heartbeats at the interval the API asks for, waits for assignments by long
//! poll, runs each job's argv as a child process in its own process group (with its env,
//! working directory and timeout) and reports its start, output and result; a timeout or a
//! cancel sends SIGTERM to the job's process group, then SIGKILL after a grace period. When
//! a job's main process exits, what it left running gets a moment to finish writing its
//! output (never past the job's timeout), then the whole group is killed. On SIGTERM,
//! Ctrl-C or a drain instruction in a heartbeat reply it stops taking work, lets running
//! jobs finish, deregisters and exits 0. An optional health command runs before each
//! heartbeat. If the API is unreachable it keeps retrying with backoff; a report the API
//! refuses as stale (409) is dropped, and so is one it refuses for good (another 4xx but
//! 408 and 429), output then being replaced by a note saying so.
//!
//! Jobs never outlive their agent: a keeper process (`keeper`) kills them when the agent
//! dies, however it dies. And they never outlive its lease (`lease`): when the API refuses
//! the worker's token (401: the control plane counts it gone and has given its jobs away)
//! or no heartbeat has got through for a lease, the agent kills its jobs at once, drops
//! their results and exits 1; a frozen agent's keeper does the killing for it.
//!
//! Every request and reply is a `hodei_protocol` type, the API's own. The modules:
//! `cli` (the command line, and `main`), `agent` (`run`: registration, the loops, draining,
//! deregistration, fencing), `session` (the API: its URLs, fail-over between replicas,
//! retries, what a failed request means), `heartbeat`, `health` (the health command),
//! `executor` (one job's process: its group, env, timeout, SIGTERM then SIGKILL), `reports`
//! (starts and results in batches), `output` (output shipping), `keeper`, `lease` and
//! `machine` (this machine's capacity).

pub mod agent;
pub mod cli;
pub mod executor;
pub mod health;
pub mod heartbeat;
pub mod interruption;
pub mod keeper;
pub mod lease;
pub mod machine;
pub mod output;
pub mod reports;
pub mod session;
