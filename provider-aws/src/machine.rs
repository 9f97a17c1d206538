//! The machine harness (feature `testing`): plays the machines of a moto cloud. It watches
//! the deployment's instances and, for each new one, does what its boot script and
//! `hodei-worker.service` would: reads the instance's user data, takes the worker's
//! environment from it, and runs the real worker binary with the unit's command line, in a
//! process group of its own. When the instance is terminated (or gone), it ends that
//! worker (SIGTERM, then SIGKILL after a grace period).
//!
//! What the script would fetch at boot is supplied: the instance id read from the metadata
//! is the instance's id, and the registration token (SSM is not played) is the harness's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine as _;
use hodei_provider::ProviderError;
use rustix::process::{kill_process_group, Pid, Signal};
use tokio::process::{Child, Command};

use crate::ec2::{describe_filtered, tag_filter};
use crate::errors::from_sdk;
use crate::user_data::{parse_worker_env, worker_argv, METADATA_INSTANCE_ID};
use crate::{AwsClients, AwsSettings, TAG_DEPLOYMENT};

/// How the harness runs.
#[derive(Debug, Clone)]
pub struct HarnessOptions {
    /// How often it lists the instances.
    pub poll_interval: Duration,
    /// How long a worker has between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Where each worker's output goes (`{instance}.log`); inherited if `None`.
    pub log_dir: Option<PathBuf>,
    /// More environment for the workers.
    pub env: BTreeMap<String, String>,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(200),
            kill_grace: Duration::from_secs(5),
            log_dir: None,
            env: BTreeMap::new(),
        }
    }
}

/// A worker the harness started for an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineWorker {
    pub instance: String,
    pub pid: u32,
    /// Its arguments (after the program), as the unit would give them.
    pub argv: Vec<String>,
    /// The environment file the boot script would have written, with what it fetches at
    /// boot filled in.
    pub env: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Running {
    worker: MachineWorker,
    child: Child,
}

#[derive(Debug, Default)]
struct State {
    running: HashMap<String, Running>,
    /// Instances already handled (started, or whose worker ended): never started twice.
    seen: HashSet<String>,
    /// Workers that ended on their own, by instance, with their exit status.
    exited: HashMap<String, Option<i32>>,
    problems: Vec<String>,
}

/// Runs workers for a moto cloud's instances; ends them all when shut down or dropped.
#[derive(Debug)]
pub struct MachineHarness {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    kill_grace: Duration,
}

impl MachineHarness {
    /// Starts watching the instances tagged with the settings' deployment, at the
    /// settings' region and endpoint.
    pub async fn start(
        settings: &AwsSettings,
        worker_binary: PathBuf,
        registration_token: String,
    ) -> Result<Self, ProviderError> {
        Self::start_with(settings, worker_binary, registration_token, HarnessOptions::default()).await
    }

    pub async fn start_with(
        settings: &AwsSettings,
        worker_binary: PathBuf,
        registration_token: String,
        options: HarnessOptions,
    ) -> Result<Self, ProviderError> {
        let clients = AwsClients::connect(settings).await;
        let state = Arc::new(Mutex::new(State::default()));
        let kill_grace = options.kill_grace;
        let watcher = Watcher {
            clients,
            deployment: settings.deployment.clone(),
            worker_binary,
            registration_token,
            options,
            state: state.clone(),
        };
        // The first listing happens before `start` returns, so a wrong endpoint shows here.
        watcher.cycle().await?;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(watcher.options.poll_interval).await;
                if let Err(error) = watcher.cycle().await {
                    tracing::warn!(%error, "machine harness: listing instances failed");
                }
            }
        });
        Ok(Self { state, task, kill_grace })
    }

    /// The instances that have a running worker, sorted.
    pub fn running(&self) -> Vec<String> {
        let mut state = lock(&self.state);
        reap(&mut state);
        let mut instances: Vec<String> = state.running.keys().cloned().collect();
        instances.sort();
        instances
    }

    /// The worker running for the instance, if any.
    pub fn worker(&self, instance: &str) -> Option<MachineWorker> {
        let mut state = lock(&self.state);
        reap(&mut state);
        state.running.get(instance).map(|running| running.worker.clone())
    }

    /// Workers that ended on their own, by instance, with their exit codes.
    pub fn exited(&self) -> HashMap<String, Option<i32>> {
        let mut state = lock(&self.state);
        reap(&mut state);
        state.exited.clone()
    }

    /// What went wrong with instances it could not start a worker for.
    pub fn problems(&self) -> Vec<String> {
        lock(&self.state).problems.clone()
    }

    /// Waits until the instance has a running worker (true) or the timeout passes.
    pub async fn wait_for_worker(&self, instance: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |harness| harness.worker(instance).is_some()).await
    }

    /// Waits until the instance has no running worker (true) or the timeout passes.
    pub async fn wait_for_no_worker(&self, instance: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |harness| harness.worker(instance).is_none()).await
    }

    /// Waits until `done` holds (true) or the timeout passes.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops watching and ends every worker (SIGTERM, then SIGKILL after the grace).
    pub async fn shutdown(self) {
        self.task.abort();
        let running: Vec<Running> = lock(&self.state).running.drain().map(|(_, running)| running).collect();
        let grace = self.kill_grace;
        let stops: Vec<_> = running.into_iter().map(|running| tokio::spawn(stop(running, grace))).collect();
        for stop in stops {
            let _ = stop.await;
        }
    }
}

impl Drop for MachineHarness {
    fn drop(&mut self) {
        self.task.abort();
        for (_, running) in lock(&self.state).running.drain() {
            signal_group(running.worker.pid, Signal::KILL);
        }
    }
}

#[derive(Debug)]
struct Watcher {
    clients: AwsClients,
    deployment: String,
    worker_binary: PathBuf,
    registration_token: String,
    options: HarnessOptions,
    state: Arc<Mutex<State>>,
}

impl Watcher {
    async fn cycle(&self) -> Result<(), ProviderError> {
        let instances = describe_filtered(
            &self.clients.ec2,
            vec![
                tag_filter(TAG_DEPLOYMENT, &self.deployment),
                Filter::builder().name("instance-state-name").values("pending").values("running").build(),
            ],
        )
        .await?;
        let live: HashSet<String> =
            instances.iter().filter_map(|instance| instance.instance_id().map(str::to_owned)).collect();
        let (gone, new): (Vec<Running>, Vec<String>) = {
            let mut state = lock(&self.state);
            reap(&mut state);
            let gone_ids: Vec<String> = state.running.keys().filter(|id| !live.contains(*id)).cloned().collect();
            let gone = gone_ids.iter().filter_map(|id| state.running.remove(id)).collect();
            let mut new: Vec<String> = live.iter().filter(|id| !state.seen.contains(*id)).cloned().collect();
            new.sort();
            (gone, new)
        };
        for running in gone {
            tracing::info!(instance = %running.worker.instance, "machine harness: instance gone, ending its worker");
            tokio::spawn(stop(running, self.options.kill_grace));
        }
        for instance in new {
            match self.start_worker(&instance).await {
                Ok(Some(running)) => {
                    let mut state = lock(&self.state);
                    state.seen.insert(instance.clone());
                    state.running.insert(instance, running);
                }
                // No user data yet: looked at again next time.
                Ok(None) => {}
                Err(problem) => {
                    tracing::warn!(%instance, %problem, "machine harness: no worker for instance");
                    let mut state = lock(&self.state);
                    state.seen.insert(instance.clone());
                    state.problems.push(format!("{instance}: {problem}"));
                }
            }
        }
        Ok(())
    }

    async fn start_worker(&self, instance: &str) -> Result<Option<Running>, String> {
        let Some(user_data) = self.user_data(instance).await.map_err(|error| error.to_string())? else {
            return Ok(None);
        };
        let mut env = parse_worker_env(&user_data);
        if env.is_empty() {
            return Err("its user data is not a Hodei worker's boot script".to_owned());
        }
        for value in env.values_mut() {
            *value = value.replace(METADATA_INSTANCE_ID, instance);
        }
        env.insert("HODEI_WORKER_REGISTRATION_TOKEN".to_owned(), self.registration_token.clone());
        let argv = worker_argv(&env);
        let mut command = Command::new(&self.worker_binary);
        command
            .args(&argv)
            .envs(&self.options.env)
            .env("HODEI_API_URL", env.get("HODEI_API_URL").cloned().unwrap_or_default())
            .env("HODEI_WORKER_REGISTRATION_TOKEN", &self.registration_token)
            .stdin(Stdio::null())
            .process_group(0);
        if let Some(dir) = &self.options.log_dir {
            let log = std::fs::File::create(dir.join(format!("{instance}.log"))).map_err(|error| error.to_string())?;
            let log_err = log.try_clone().map_err(|error| error.to_string())?;
            command.stdout(log).stderr(log_err);
        }
        let child = command.spawn().map_err(|error| format!("cannot run {}: {error}", self.worker_binary.display()))?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(%instance, pid, "machine harness: started worker");
        Ok(Some(Running { worker: MachineWorker { instance: instance.to_owned(), pid, argv, env }, child }))
    }

    /// The instance's user data, or that of its Auto Scaling group's launch template when
    /// the instance has none of its own (as moto does for a group's instances).
    async fn user_data(&self, instance: &str) -> Result<Option<String>, ProviderError> {
        let attribute = self
            .clients
            .ec2
            .describe_instance_attribute()
            .instance_id(instance)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .map_err(|error| from_sdk("DescribeInstanceAttribute", &error))?;
        if let Some(encoded) = attribute.user_data().and_then(|value| value.value()).filter(|value| !value.is_empty()) {
            return Ok(Some(decode(encoded)));
        }
        let found = self
            .clients
            .autoscaling
            .describe_auto_scaling_instances()
            .instance_ids(instance)
            .send()
            .await
            .map_err(|error| from_sdk("DescribeAutoScalingInstances", &error))?;
        let Some(template) = found.auto_scaling_instances().first().and_then(|details| details.launch_template())
        else {
            return Ok(None);
        };
        let mut call = self.clients.ec2.describe_launch_template_versions();
        if let Some(id) = template.launch_template_id() {
            call = call.launch_template_id(id);
        } else if let Some(name) = template.launch_template_name() {
            call = call.launch_template_name(name);
        }
        let versions = call
            .versions(template.version().unwrap_or("$Default"))
            .send()
            .await
            .map_err(|error| from_sdk("DescribeLaunchTemplateVersions", &error))?;
        Ok(versions
            .launch_template_versions()
            .first()
            .and_then(|version| version.launch_template_data())
            .and_then(|data| data.user_data())
            .filter(|data| !data.is_empty())
            .map(decode))
    }
}

fn decode(encoded: &str) -> String {
    match base64::engine::general_purpose::STANDARD.decode(encoded.trim()) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        // Not base64: taken as the script itself.
        Err(_) => encoded.to_owned(),
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Moves workers that ended on their own out of the running ones.
fn reap(state: &mut State) {
    let ended: Vec<(String, Option<i32>)> = state
        .running
        .iter_mut()
        .filter_map(|(id, running)| match running.child.try_wait() {
            Ok(Some(status)) => Some((id.clone(), status.code())),
            Ok(None) => None,
            Err(_) => Some((id.clone(), None)),
        })
        .collect();
    for (id, code) in ended {
        state.running.remove(&id);
        state.exited.insert(id, code);
    }
}

fn signal_group(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process_group(pid, signal);
    }
}

/// SIGTERM to the worker's process group, SIGKILL if it is still there after the grace.
async fn stop(mut running: Running, grace: Duration) {
    signal_group(running.worker.pid, Signal::TERM);
    if tokio::time::timeout(grace, running.child.wait()).await.is_err() {
        signal_group(running.worker.pid, Signal::KILL);
        let _ = running.child.wait().await;
    }
    // Whatever else of the group outlived its leader.
    signal_group(running.worker.pid, Signal::KILL);
}
