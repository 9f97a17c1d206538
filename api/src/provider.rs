//! The providers this process has, and the `local` provider, which runs worker processes
//! on this machine. The contract every provider implements is `hodei_provider`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use hodei_core::pool::ProviderLimits;
pub use hodei_provider::{
    BoxFuture, InstanceState, ListedInstance, Provider, ProviderError, ProvisionRequest, SpotQuote,
};
use uuid::Uuid;

/// The providers this process can use, by name.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<dyn Provider>>,
}

impl Providers {
    pub fn with(mut self, name: &str, provider: Arc<dyn Provider>) -> Self {
        self.by_name.insert(name.to_owned(), provider);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.by_name.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// What each provider allows, for validating pools.
    pub fn limits(&self) -> Vec<ProviderLimits> {
        self.by_name.iter().map(|(name, provider)| ProviderLimits { name: name.clone(), ..provider.limits() }).collect()
    }
}

/// The limits of the `local` provider, also for validation where no provider is running
/// (`hodei config check`). None beyond the schema's: a local worker's capacity is a budget
/// it offers the scheduler, not a reservation, and local workers share the machine (as
/// `hodei dev`'s do), so a pool may declare more than this machine has. Cloud providers
/// state their largest instance.
pub fn local_limits() -> ProviderLimits {
    ProviderLimits { name: "local".to_owned(), max_memory_mib: u32::MAX, max_cpu_millis: u32::MAX }
}

/// The limits of the AWS providers: none here; what an instance type offers is checked
/// against the account (`Provider::validate`).
pub fn aws_limits() -> Vec<ProviderLimits> {
    ["aws-ec2", "aws-asg"]
        .into_iter()
        .map(|name| ProviderLimits { name: name.to_owned(), max_memory_mib: u32::MAX, max_cpu_millis: u32::MAX })
        .collect()
}

/// This machine's memory in MiB, as the workers it starts detect it (no limit if unknown).
pub fn host_memory_mib() -> u32 {
    hodei_worker_runtime::machine::total_memory_mib().map_or(u32::MAX, |mib| u32::try_from(mib).unwrap_or(u32::MAX))
}

/// Runs `hodei-worker` processes on this machine and reaps them when they exit.
#[derive(Debug)]
pub struct LocalProvider {
    settings: LocalSettings,
    /// Children this process started: reaped by a task each, so none lingers as a zombie.
    children: Arc<Mutex<HashMap<u32, Uuid>>>,
}

/// How the local provider starts workers.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub worker_binary: PathBuf,
    /// The API URL(s) workers talk to (comma-separated replicas).
    pub api_urls: String,
    pub registration_token: String,
    /// Where each worker's output goes (`<dir>/<pool>-<member>.log`); discarded if unset.
    pub log_dir: Option<PathBuf>,
    /// The CA the workers trust for an https:// API.
    pub ca_file: Option<PathBuf>,
    /// Where the workers watch for an interruption notice (`--interruption-url`), with
    /// `{instance_id}` replaced by each worker's member id.
    pub interruption_url: Option<String>,
    /// How long a draining worker's jobs get before they are interrupted (and retried).
    pub drain_timeout: std::time::Duration,
}

impl LocalProvider {
    pub fn new(settings: LocalSettings) -> Self {
        Self { settings, children: Arc::default() }
    }

    /// The default worker binary: `hodei-worker` next to this executable.
    pub fn default_worker_binary() -> PathBuf {
        std::env::current_exe()
            .map(|exe| exe.with_file_name("hodei-worker"))
            .unwrap_or_else(|_| PathBuf::from("hodei-worker"))
    }

    fn command(&self, request: &ProvisionRequest) -> Result<tokio::process::Command, ProviderError> {
        let template = &request.pool.template;
        let member = request.member.to_string();
        // Only the configured worker binary, with arguments built here: nothing in a pool
        // spec becomes a command of its own on this host.
        let mut command = tokio::process::Command::new(&self.settings.worker_binary);
        command.args(["--api-url", &self.settings.api_urls]);
        if let Some(ca_file) = &self.settings.ca_file {
            command.arg("--ca-file").arg(ca_file);
        }
        command.args(["run", "--pool", &request.pool.id]);
        if let Some(url) = &self.settings.interruption_url {
            // Each instance has its own metadata: `{instance_id}` names the member.
            let url = url.replace("{instance_id}", &member);
            command.args(["--interruption-url", &url, "--interruption-poll-seconds", "1"]);
        }
        command.args(["--drain-timeout-seconds", &self.settings.drain_timeout.as_secs().to_string()]);
        command.args(["--name", &format!("{}-{}", request.pool.id, &member[member.len() - 8..])]);
        command.args(["--instance-id", &member, "--slots", &template.slots().to_string(), "--exit-with-parent"]);
        if let Some(cpu) = template.cpu_millis {
            command.args(["--cpu-millis", &cpu.to_string()]);
        }
        if let Some(memory) = template.memory_mib {
            command.args(["--memory-mib", &memory.to_string()]);
        }
        for (key, value) in &template.labels {
            command.args(["--label", &format!("{key}={value}")]);
        }
        if let Some(check) = &request.pool.health.command {
            command.arg("--health-command").arg(serde_json::to_string(check).unwrap_or_default());
        }
        // A clean environment: the control plane's own (its database URL, admin key, …)
        // never reaches a worker or its jobs. The worker gets a search path, its home and
        // locale, the pool's environment, and the registration token it needs (which it
        // keeps from its jobs).
        command.env_clear();
        for inherited in ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER"] {
            if let Some(value) = std::env::var_os(inherited) {
                command.env(inherited, value);
            }
        }
        command.envs(&template.env).env("HODEI_WORKER_REGISTRATION_TOKEN", &self.settings.registration_token);
        let output = match &self.settings.log_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| ProviderError::new(format!("creating {}: {e}", dir.display())))?;
                let path = dir.join(format!("{}-{member}.log", request.pool.id));
                let file = std::fs::File::create(&path)
                    .map_err(|e| ProviderError::new(format!("creating {}: {e}", path.display())))?;
                let copy = file.try_clone().map_err(|e| ProviderError::new(e.to_string()))?;
                (Stdio::from(file), Stdio::from(copy))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        // Its own process group, so a Ctrl-C at the terminal reaches the control plane,
        // which then drains its workers in order.
        command.stdin(Stdio::null()).stdout(output.0).stderr(output.1).process_group(0);
        Ok(command)
    }
}

impl Provider for LocalProvider {
    fn limits(&self) -> ProviderLimits {
        local_limits()
    }

    fn provision<'a>(&'a self, request: &'a ProvisionRequest) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let mut child = self
                .command(request)?
                .spawn()
                .map_err(|e| ProviderError::new(format!("starting {}: {e}", self.settings.worker_binary.display())))?;
            let pid = child.id().ok_or_else(|| ProviderError::new("the worker exited at once"))?;
            if let Ok(mut children) = self.children.lock() {
                children.insert(pid, request.member);
            }
            let children = self.children.clone();
            tokio::spawn(async move {
                let _ = child.wait().await;
                if let Ok(mut children) = children.lock() {
                    children.remove(&pid);
                }
            });
            Ok(format!("pid:{pid}"))
        })
    }

    fn terminate<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let Some(pid) = parse_pid(instance) else { return Ok(()) };
            if process_state(pid) == InstanceState::Gone {
                return Ok(());
            }
            // The worker and everything it started (jobs run in process groups of their own).
            let mut doomed = descendants(pid);
            doomed.push(pid);
            signal(&doomed, "KILL").await;
            Ok(())
        })
    }

    fn describe<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<InstanceState, ProviderError>> {
        Box::pin(async move {
            let pid =
                parse_pid(instance).ok_or_else(|| ProviderError::new(format!("not a local instance: {instance}")))?;
            Ok(process_state(pid))
        })
    }
}

impl LocalProvider {
    /// Asks every worker this process started to drain (SIGTERM) and waits up to `grace`
    /// for them to leave; used when the control plane shuts down.
    pub async fn stop_own_workers(&self, grace: std::time::Duration) {
        let pids: Vec<u32> = self.children.lock().map(|c| c.keys().copied().collect()).unwrap_or_default();
        if pids.is_empty() {
            return;
        }
        signal(&pids, "TERM").await;
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if self.children.lock().map(|c| c.is_empty()).unwrap_or(true) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let left: Vec<u32> = self.children.lock().map(|c| c.keys().copied().collect()).unwrap_or_default();
        signal(&left, "KILL").await;
    }
}

fn parse_pid(instance: &str) -> Option<u32> {
    instance.strip_prefix("pid:")?.parse().ok()
}

/// Running unless the process is gone or a zombie.
fn process_state(pid: u32) -> InstanceState {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) {
            Some("Z") | Some("X") | None => InstanceState::Gone,
            Some(_) => InstanceState::Running,
        },
        Err(_) => InstanceState::Gone,
    }
}

/// Every process below `root`, from `/proc`.
fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, parent))
        })
        .collect();
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(parents.iter().filter(|(_, p)| *p == parent).map(|(pid, _)| *pid));
        index += 1;
    }
    found.remove(0);
    found
}

async fn signal(pids: &[u32], name: &str) {
    if pids.is_empty() {
        return;
    }
    let mut command = tokio::process::Command::new("kill");
    command.arg(format!("-{name}")).args(pids.iter().map(u32::to_string));
    let _ = command.stdout(Stdio::null()).stderr(Stdio::null()).status().await;
}
