//! The machine harness runs a (fake) worker for each of moto's instances, and ends it with
//! the instance.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
use hodei_core::pool::CloudSettings;
use hodei_provider::{Provider, ProvisionRequest};
use hodei_provider_aws::machine::{HarnessOptions, MachineHarness};
use hodei_provider_aws::{render_user_data, worker_argv, AsgProvider, Ec2Provider, InstanceIdSource};
use support::*;

const WAIT: Duration = Duration::from_secs(15);

/// A fake worker: records its arguments and environment, records SIGTERM, then sleeps.
fn fake_worker(dir: &Path) -> PathBuf {
    let path = dir.join("fake-worker");
    let script = format!(
        "#!/bin/bash\nout={dir}/worker-$$\nprintf '%s\\n' \"$@\" > \"$out.argv\"\nprintf 'HODEI_API_URL=%s\\nHODEI_WORKER_REGISTRATION_TOKEN=%s\\n' \"$HODEI_API_URL\" \"$HODEI_WORKER_REGISTRATION_TOKEN\" > \"$out.env\"\ntrap 'echo term > \"$out.term\"; exit 0' TERM\nwhile true; do sleep 0.05 & wait $!; done\n",
        dir = dir.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn read(dir: &Path, pid: u32, suffix: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("worker-{pid}.{suffix}"))).ok()
}

async fn wait_file(dir: &Path, pid: u32, suffix: &str) -> String {
    for _ in 0..200 {
        if let Some(text) = read(dir, pid, suffix) {
            if !text.is_empty() {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("worker {pid} wrote no .{suffix}");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hodei-provider-aws-{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn runs_a_worker_per_ec2_instance_and_ends_it_with_the_instance() {
    let moto = moto().await;
    let settings = settings(&moto.url());
    let clients = clients(&settings).await;
    let provider = Ec2Provider::new(clients.clone(), settings.clone());
    let pool = ec2_pool(&clients, "machines", &["t3.micro"]).await;
    let dir = temp_dir("ec2");
    let options = HarnessOptions { kill_grace: Duration::from_secs(2), ..Default::default() };
    let harness = MachineHarness::start_with(&settings, fake_worker(&dir), "pool-token".into(), options).await.unwrap();
    assert_eq!(harness.running(), Vec::<String>::new());

    let (a, b) = (member(), member());
    let first = provider.provision(&ProvisionRequest { member: a, attempt: 1, pool: pool.clone() }).await.unwrap();
    let second = provider.provision(&ProvisionRequest { member: b, attempt: 1, pool: pool.clone() }).await.unwrap();
    assert!(harness.wait_for_worker(&first, WAIT).await);
    assert!(harness.wait_for_worker(&second, WAIT).await);
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(harness.running(), both);

    let worker = harness.worker(&first).unwrap();
    let expected_env =
        hodei_provider_aws::parse_worker_env(&render_user_data(&settings, &pool, InstanceIdSource::Member(a)));
    let mut expected_argv_env: BTreeMap<String, String> = expected_env.clone();
    expected_argv_env.insert("HODEI_WORKER_REGISTRATION_TOKEN".into(), "pool-token".into());
    assert_eq!(worker.env, expected_argv_env);
    assert_eq!(worker.argv, worker_argv(&expected_env));
    assert_eq!(&worker.argv[..5], ["run", "--pool", "machines", "--instance-id", &a.to_string()]);
    let argv: Vec<String> = wait_file(&dir, worker.pid, "argv").await.lines().map(str::to_owned).collect();
    assert_eq!(argv, worker.argv);
    let env = wait_file(&dir, worker.pid, "env").await;
    assert_eq!(env, format!("HODEI_API_URL={}\nHODEI_WORKER_REGISTRATION_TOKEN=pool-token\n", settings.api_urls));

    provider.terminate(&first).await.unwrap();
    assert!(harness.wait_for_no_worker(&first, WAIT).await);
    assert_eq!(wait_file(&dir, worker.pid, "term").await, "term\n");
    assert_eq!(harness.running(), std::slice::from_ref(&second));
    assert!(harness.problems().is_empty(), "{:?}", harness.problems());

    let last = harness.worker(&second).unwrap();
    harness.shutdown().await;
    assert_eq!(wait_file(&dir, last.pid, "term").await, "term\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn reads_an_asg_instance_script_from_its_launch_template() {
    let moto = moto().await;
    let settings = settings(&moto.url());
    let clients = clients(&settings).await;
    let pool =
        pool("fleet", "aws-asg", CloudSettings { auto_scaling_group: Some("fleet".into()), ..Default::default() });
    let script = render_user_data(&settings, &pool, InstanceIdSource::Metadata);
    let template = launch_template(&clients, "fleet-template", Some(&script)).await;
    clients
        .autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name("fleet")
        .launch_template(LaunchTemplateSpecification::builder().launch_template_id(template).version("$Latest").build())
        .min_size(0)
        .max_size(2)
        .desired_capacity(0)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
    let provider = AsgProvider::new(clients.clone(), settings.clone())
        .with_claim_timing(Duration::from_secs(10), Duration::from_millis(100));
    let dir = temp_dir("asg");
    let options = HarnessOptions { kill_grace: Duration::from_secs(2), ..Default::default() };
    let harness = MachineHarness::start_with(&settings, fake_worker(&dir), "pool-token".into(), options).await.unwrap();

    let instance = provider.provision(&ProvisionRequest { member: member(), attempt: 1, pool }).await.unwrap();
    assert!(harness.wait_for_worker(&instance, WAIT).await, "{:?}", harness.problems());
    let worker = harness.worker(&instance).unwrap();
    assert_eq!(worker.env["HODEI_INSTANCE_ID"], instance);
    assert_eq!(worker.env["HODEI_WORKER_NAME"], format!("fleet-{instance}"));
    assert_eq!(
        &worker.argv[..7],
        ["run", "--pool", "fleet", "--instance-id", &instance, "--name", &format!("fleet-{instance}")]
    );

    provider.terminate(&instance).await.unwrap();
    assert!(harness.wait_for_no_worker(&instance, WAIT).await);
    assert_eq!(wait_file(&dir, worker.pid, "term").await, "term\n");
    harness.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
