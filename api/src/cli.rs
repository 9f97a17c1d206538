//! The `hodei` command line: parses arguments, loads the configuration once, sets up
//! logging, and dispatches to the library. Exit codes: 0 success, 1 failure while running,
//! 2 invalid configuration or arguments. The API client commands (`jobs`, `queues`, `schedules`,
//! `pools`, `workers`, `dead-letters`) are dispatched first, without the server
//! configuration, and have exit codes of their own (`client::EXIT_CODES_HELP`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::auth::generate_key;
use crate::config::{Config, LogFormat};
use crate::{client, db, dev, serve, store};

#[derive(Debug, Parser)]
#[command(
    name = "hodei",
    version,
    about = "Hodei: a job-scheduling control plane on PostgreSQL",
    after_help = "Exit codes: 0 success, 1 failure while running, 2 invalid configuration or arguments.\n\
        The client commands (jobs, queues, schedules, pools, workers, dead-letters) also use 3 (not found), \
        4 (rejected by the API) and 5 (`jobs logs --follow`: the job did not succeed); see `hodei jobs --help`."
)]
pub struct Cli {
    /// Configuration file (YAML). HODEI_* environment variables override it.
    #[arg(long, global = true, env = "HODEI_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Print the URLs and keys of the running `hodei dev` again (from its profile).
    Keys,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API (applies pending migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Start a complete local system: an embedded Postgres under ./.hodei/ unless a
    /// database URL is configured, a dev tenant, and the API.
    Dev {
        #[command(subcommand)]
        command: Option<DevCommand>,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Replay a demand trace through a pool's autoscaler with a virtual clock and print
    /// cost, waits, launches and busy workers interrupted (JSON).
    Simulate {
        /// The trace: a JSON array of `{"at": seconds, "duration": seconds}`, or
        /// `builtin:bursty-day` for a deterministic bursty day.
        #[arg(long)]
        trace: String,
        /// The pool spec (YAML or JSON), as in the configuration file's `pools`.
        #[arg(long)]
        pool: std::path::PathBuf,
        /// Seconds from a launch until its worker registers.
        #[arg(long, default_value_t = 30)]
        launch_seconds: u32,
        /// Price of one instance per hour.
        #[arg(long, default_value_t = 0.10)]
        price_per_hour: f64,
    },
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Administration straight against the database.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Client commands that talk to a running API over HTTP.
    #[command(flatten)]
    Client(Box<client::ClientCommand>),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file (and the HODEI_* environment); exit 2 with the reason if invalid.
    Check {
        /// The file to check; defaults to --config / HODEI_CONFIG.
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a tenant and print a new key for it.
    CreateTenant {
        name: String,
        /// Fair-queuing weight (1-1000).
        #[arg(long, default_value_t = 1)]
        weight: i32,
    },
    /// Print a new API key for a tenant, or a new admin key.
    CreateKey(CreateKeyArgs),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CreateKeyArgs {
    /// The tenant the key acts for.
    #[arg(long)]
    tenant: Option<String>,
    /// Create an admin key instead.
    #[arg(long)]
    admin: bool,
}

/// Entry point of the `hodei` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        // Clients of a running API: no server configuration, database or logging needed.
        Command::Client(command) => return client::main(*command),
        command => command,
    };
    if let Command::Config(ConfigCommand::Check { file }) = &command {
        return check_config(file.as_ref().or(cli.config.as_ref()));
    }
    if let Command::Simulate { trace, pool, launch_seconds, price_per_hour } = &command {
        return match simulate(trace, pool, *launch_seconds, *price_per_hour) {
            Ok(report) => {
                client::print_quietly(&format!("{report}\n"));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("hodei: {error:#}");
                ExitCode::from(2)
            }
        };
    }
    let config = match Config::from_process_environment(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("hodei: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hodei: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hodei: {error:#}");
            let is_config_error = error.downcast_ref::<crate::config::ConfigError>().is_some();
            ExitCode::from(if is_config_error { 2 } else { 1 })
        }
    }
}

fn check_config(file: Option<&PathBuf>) -> ExitCode {
    let environment = std::env::vars().filter(|(k, _)| k.starts_with("HODEI_")).collect();
    match Config::load(file.map(PathBuf::as_path), &environment) {
        Ok(_) => {
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hodei: {error}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    use std::io::IsTerminal;
    // Colour only on a terminal: a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr (the pipe's reader went away) must not become a panic.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    // A second initialisation (in tests) is harmless and ignored.
    let _ = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let shutdown = CancellationToken::new();
            serve::cancel_on_signals(shutdown.clone());
            serve::run(&config, shutdown).await
        }
        Command::Migrate => {
            let url = config.require_database_url()?;
            let pool = db::connect(url.expose(), 2).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Dev { command: None } => dev::run(&config).await,
        Command::Dev { command: Some(DevCommand::Keys) } => dev::print_keys(&config),
        Command::Openapi => {
            let document = crate::http::openapi().to_pretty_json().context("rendering the OpenAPI document")?;
            client::print_quietly(&format!("{document}\n"));
            Ok(())
        }
        Command::Config(_) | Command::Client(_) | Command::Simulate { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Command::Admin(admin) => run_admin(admin, &config).await,
    }
}

async fn run_admin(command: AdminCommand, config: &Config) -> anyhow::Result<()> {
    let url = config.require_database_url()?;
    let pool = db::connect(url.expose(), 2).await?;
    db::migrate(&pool).await?;
    match command {
        AdminCommand::CreateTenant { name, weight } => {
            hodei_core::names::check_resource_name(&name)
                .map_err(|message| anyhow::anyhow!("tenant name: {message}"))?;
            anyhow::ensure!((1..=store::tenants::MAX_WEIGHT).contains(&weight), "weight: must be between 1 and 1000");
            let mut transaction = pool.begin().await?;
            let tenant = store::tenants::create(&mut *transaction, &name, weight)
                .await
                .with_context(|| format!("creating tenant {name:?} (does it exist already?)"))?;
            let key = generate_key()?;
            store::api_keys::insert_tenant_key(&mut *transaction, tenant.id, &key, "created by hodei admin").await?;
            transaction.commit().await?;
            println!("tenant: {}", tenant.name);
            println!("api key: {}", key.plaintext);
        }
        AdminCommand::CreateKey(CreateKeyArgs { tenant: Some(name), .. }) => {
            let tenant =
                store::tenants::get(&pool, &name).await?.with_context(|| format!("no tenant named {name:?}"))?;
            let key = generate_key()?;
            store::api_keys::insert_tenant_key(&pool, tenant.id, &key, "created by hodei admin").await?;
            println!("{}", key.plaintext);
        }
        AdminCommand::CreateKey(CreateKeyArgs { admin: true, .. }) => {
            let key = generate_key()?;
            store::api_keys::insert_admin_key(&pool, &key, "created by hodei admin").await?;
            println!("{}", key.plaintext);
        }
        AdminCommand::CreateKey(_) => anyhow::bail!("pass --tenant NAME or --admin"),
    }
    Ok(())
}

/// `hodei simulate`: the pool spec is validated as the configuration file's pools are.
fn simulate(trace: &str, pool: &std::path::Path, launch_seconds: u32, price_per_hour: f64) -> anyhow::Result<String> {
    use anyhow::Context;
    use hodei_core::simulate::{self, Arrival, Machine};
    let text = std::fs::read_to_string(pool).with_context(|| format!("reading {}", pool.display()))?;
    let spec: hodei_core::pool::PoolSpec =
        serde_yaml::from_str(&text).with_context(|| format!("{}: not a pool spec", pool.display()))?;
    hodei_core::pool::validate_pool(&spec, &[crate::provider::local_limits()])
        .map_err(|errors| anyhow::anyhow!("{}: {errors}", pool.display()))?;
    let arrivals: Vec<Arrival> = match trace {
        "builtin:bursty-day" => simulate::bursty_day(1),
        path => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            serde_json::from_str(&text).with_context(|| format!("{path}: not a JSON array of {{at, duration}}"))?
        }
    };
    if !(price_per_hour.is_finite() && price_per_hour >= 0.0) {
        anyhow::bail!("--price-per-hour: must be a number of at least 0");
    }
    let machine = Machine { launch_seconds, price_per_hour, start: simulate::a_wednesday() };
    let report = simulate::replay(&spec, &arrivals, &machine);
    Ok(serde_json::to_string_pretty(&report)?)
}
