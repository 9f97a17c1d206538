//! The command line: `check`, `run` and the hidden `keeper`, and `main`, which runs them.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::{agent, keeper, session};

#[derive(Debug, Parser)]
#[command(name = "hodei-worker", version, about = "Hodei worker agent")]
pub struct Cli {
    /// Base URL of the Hodei API, e.g. http://127.0.0.1:8080; several replicas may be given,
    /// separated by commas: the worker moves to the next when one stops answering.
    #[arg(long, env = "HODEI_API_URL")]
    pub api_url: Option<String>,
    /// PEM file of certificate authorities to trust for an https:// API, besides the
    /// system's (for a private CA).
    #[arg(long, env = "HODEI_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the API is reachable and ready; exit 0 if so, 1 if not.
    Check,
    /// Register, heartbeat, and deregister on SIGTERM.
    Run(Box<RunArgs>),
    /// The agent's keeper (started by `run` itself): kills the agent's jobs when the agent
    /// is gone or its lease ran out.
    #[command(hide = true)]
    Keeper {
        #[arg(long)]
        session: String,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pool's registration token.
    #[arg(long, env = "HODEI_WORKER_REGISTRATION_TOKEN", hide_env_values = true)]
    pub registration_token: String,
    /// This worker's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "default")]
    pub pool: String,
    /// CPU in millicores (default: detected).
    #[arg(long)]
    pub cpu_millis: Option<i64>,
    /// Memory in MiB (default: detected).
    #[arg(long)]
    pub memory_mib: Option<i64>,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    pub slots: i64,
    /// A label, `key=value`; repeat for more.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The cloud instance id, if any (a pool's provider sets it to the member id).
    #[arg(long)]
    pub instance_id: Option<String>,
    /// A health check run before each heartbeat, as a JSON array (`["pg_isready"]`), with
    /// `HODEI_WORKER_ID` and `HODEI_INSTANCE_ID` in its environment; a non-zero exit is
    /// reported as unhealthy.
    #[arg(long, value_parser = parse_argv)]
    pub health_command: Option<Argv>,
    /// After a timeout or a cancel, how long a job has between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 10)]
    pub kill_grace_seconds: u64,
    /// How long the control plane holds this worker's jobs without a heartbeat (its
    /// `worker_lease_seconds`), unless the API says: after that long without a heartbeat
    /// getting through, the jobs may be running elsewhere, so the worker kills them and exits.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_seconds: u64,
    /// Drain and exit when the process that started this worker ends (the `local`
    /// provider's workers live and die with their control plane); running jobs get
    /// `--orphan-grace-seconds` to finish.
    #[arg(long)]
    pub exit_with_parent: bool,
    #[arg(long, default_value_t = 30)]
    pub orphan_grace_seconds: u64,
    /// When draining (SIGTERM, Ctrl-C, or the control plane's instruction), how long
    /// running jobs get to finish; then they are stopped (SIGTERM, SIGKILL after the kill
    /// grace) and reported interrupted, which the control plane retries. Without it,
    /// running jobs get as long as they take.
    #[arg(long)]
    pub drain_timeout_seconds: Option<u64>,
    /// Where the cloud announces that it reclaims this instance (a spot interruption):
    /// on EC2 `http://169.254.169.254/latest/meta-data/spot/instance-action`. Polled;
    /// a notice drains the worker at once and is reported to the control plane.
    #[arg(long, env = "HODEI_WORKER_INTERRUPTION_URL")]
    pub interruption_url: Option<String>,
    /// How often to poll `--interruption-url`.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub interruption_poll_seconds: u64,
    /// How assignments run: `process` (the job's argv, the only choice in production) or
    /// `noop`, for benchmarks of the control plane only: every assignment is reported
    /// started and succeeded at once and nothing runs. `noop` is refused unless
    /// `HODEI_WORKER_NOOP_EXECUTOR=allow` is set, so no worker skips real jobs by mistake.
    #[arg(long, value_enum, default_value_t = Executor::Process)]
    pub executor: Executor,
}

/// How a worker runs its assignments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    Process,
    Noop,
}

/// The setting that allows `--executor noop`, and its one accepted value.
pub const NOOP_EXECUTOR_SETTING: (&str, &str) = ("HODEI_WORKER_NOOP_EXECUTOR", "allow");

/// A command line given as one JSON array.
#[derive(Debug, Clone)]
pub struct Argv(pub Vec<String>);

fn parse_argv(text: &str) -> Result<Argv, String> {
    let argv: Vec<String> = serde_json::from_str(text).map_err(|e| format!("expected a JSON array of strings: {e}"))?;
    if argv.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(Argv(argv))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

/// Runs the command `cli` names; how the process should exit.
pub fn main(cli: Cli) -> ExitCode {
    let api_urls = match (&cli.command, session::api_urls(cli.api_url.as_deref())) {
        (Command::Keeper { .. }, _) => Vec::new(),
        (_, Ok(api_urls)) => api_urls,
        (_, Err(message)) => {
            eprintln!("hodei-worker: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hodei-worker: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Keeper { session } => {
            let code = runtime.block_on(keeper::run(&session));
            runtime.shutdown_background();
            return code;
        }
        command => match session::client(cli.ca_file.as_deref()) {
            Err(error) => Err(error),
            Ok(client) => match command {
                Command::Check => runtime.block_on(session::check(&client, &api_urls[0])),
                Command::Run(args)
                    if args.executor == Executor::Noop
                        && std::env::var(NOOP_EXECUTOR_SETTING.0).ok().as_deref() != Some(NOOP_EXECUTOR_SETTING.1) =>
                {
                    eprintln!(
                        "hodei-worker: --executor noop runs no job and reports each succeeded; it is for \
                         benchmarks only: set {}={} to allow it",
                        NOOP_EXECUTOR_SETTING.0, NOOP_EXECUTOR_SETTING.1
                    );
                    runtime.shutdown_background();
                    return ExitCode::from(2);
                }
                Command::Run(args) => runtime.block_on(agent::run(client, api_urls, *args)),
                Command::Keeper { .. } => unreachable!("handled above"),
            },
        },
    };
    // Nothing still in flight (a name lookup on a blocking thread) may hold up the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hodei-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::api_urls;

    #[test]
    fn run_arguments_parse() {
        let cli = Cli::try_parse_from([
            "hodei-worker",
            "--api-url",
            "http://a,http://b",
            "run",
            "--registration-token",
            "t",
            "--health-command",
            r#"["sh", "-c", "exit 0"]"#,
            "--label",
            "zone=a",
            "--exit-with-parent",
        ])
        .expect("parses");
        assert_eq!(api_urls(cli.api_url.as_deref()), Ok(vec!["http://a".to_owned(), "http://b".to_owned()]));
        let Command::Run(args) = cli.command else { panic!("run") };
        assert_eq!(args.health_command.map(|Argv(argv)| argv), Some(vec!["sh".into(), "-c".into(), "exit 0".into()]));
        assert_eq!(args.labels, [("zone".to_owned(), "a".to_owned())]);
        assert!(args.exit_with_parent);
        assert_eq!(args.lease_seconds, 30);
        let empty =
            ["hodei-worker", "--api-url", "http://a", "run", "--registration-token", "t", "--health-command", "[]"];
        let error = Cli::try_parse_from(empty).expect_err("an empty health command is refused").to_string();
        assert!(error.contains("must not be empty"), "{error}");
        assert!(api_urls(None).is_err());
        assert!(api_urls(Some("http://a,ftp://b")).is_err_and(|error| error.contains("ftp://b")));
    }
}
