//! The AWS providers end to end: the real `hodei serve` with `providers.aws` pointed at a
//! real `moto_server` on loopback, and a harness that plays the machines (moto runs no
//! user data): for every instance moto runs with this deployment's tag it starts a real
//! `hodei-worker` with the arguments from the instance's boot script, and stops it when
//! moto terminates the instance. A burst scales an `aws-ec2` pool out, the jobs run on
//! those workers, the pool scales back in, and an instance no member knows is terminated.
//! The server reaches moto through a proxy that throttles its first launches and
//! describes (moto injects no faults): the pool converges with no duplicate instance.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{InstanceStateName, ResourceType, Tag, TagSpecification};
use hodei_e2e::{binary, free_port, wait_until, Client, ConfigFile, Server, TestDatabase, WORKER_REGISTRATION_TOKEN};
use hodei_provider_aws::machine::MachineHarness;
use hodei_provider_aws::testing::{self, Fault, FaultProxy, MotoServer};
use hodei_provider_aws::AwsClients;
use reqwest::StatusCode;
use serde_json::Value;

async fn members(admin: &Client, pool: &str) -> Vec<Value> {
    admin.get(&format!("/api/v1/pools/{pool}/workers")).await.body["workers"].as_array().cloned().unwrap_or_default()
}

async fn instance_state(clients: &AwsClients, id: &str) -> Option<InstanceStateName> {
    let described = clients.ec2.describe_instances().instance_ids(id).send().await.ok()?;
    let instance = described.reservations().iter().flat_map(|r| r.instances()).next()?.clone();
    instance.state().and_then(|state| state.name()).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_scales_an_ec2_pool_out_on_moto_and_back_in_and_strays_are_terminated() {
    testing::use_test_credentials();
    let moto = MotoServer::start().await.unwrap_or_else(|error| panic!("{}: {error}", testing::MOTO_INSTALL));
    let proxy = FaultProxy::start(moto.addr()).await.expect("the fault proxy");
    proxy.add(Fault::throttle("RunInstances", 3));
    proxy.add(Fault::throttle("DescribeInstances", 3));
    let port = free_port();
    let deployment = format!("e2e-{}", std::process::id());
    let mut settings = testing::settings(&moto.url(), &deployment);
    settings.api_urls = format!("http://127.0.0.1:{port}");
    let clients = AwsClients::connect_with_retry(&settings, testing::fast_retry()).await;
    let images = clients.ec2.describe_images().owners("amazon").send().await.expect("images");
    let image = images.images().iter().find_map(|image| image.image_id()).expect("an image").to_owned();

    let config = ConfigFile::new(&format!(
        "providers:
  aws:
    region: us-east-1
    endpoint_url: {proxy}
    deployment: {deployment}
    api_urls: http://127.0.0.1:{port}
    registration_token_parameter: /hodei/{deployment}/registration-token
    drain_timeout_seconds: 5
pools:
  - id: cloud
    kind: dynamic
    provider: aws-ec2
    min_size: 0
    max_size: 2
    template: {{slots: 1, cpu_millis: 1000, memory_mib: 512, image: {image}}}
    cloud: {{instance_types: [t3.micro]}}
    scaling: {{idle_seconds: 2, cooldown: {{scale_out_seconds: 0, scale_in_seconds: 1}}}}
",
        proxy = proxy.url(),
    ));
    let database = TestDatabase::empty().await;
    let credentials =
        [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_EC2_METADATA_DISABLED", "true")];
    let mut server = Server::spawn_configured(&database.url, port, Some(config.path()), &credentials);
    server.wait_ready(Duration::from_secs(60)).await;
    let harness = MachineHarness::start(&settings, binary("hodei-worker"), WORKER_REGISTRATION_TOKEN.to_owned())
        .await
        .expect("the machine harness");
    let admin = server.admin();
    let acme = server.tenant("acme").await;

    // What only the account knows is checked before a pool is created: 422 naming the
    // field, and nothing created.
    let bad = serde_json::json!({"id": "bad", "kind": "dynamic", "provider": "aws-ec2", "min_size": 0, "max_size": 1,
        "template": {"image": image}, "cloud": {"instance_types": ["t9.nonexistent"], "launch_template": "lt-0000000000nothere"}});
    let refused = admin.post("/api/v1/pools", bad).await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let detail = refused.body["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("cloud.instance_types[0]: no instance type t9.nonexistent"), "{refused:?}");
    assert!(detail.contains("cloud.launch_template: no launch template lt-0000000000nothere"), "{refused:?}");
    assert_eq!(admin.get("/api/v1/pools/bad").await.status, StatusCode::NOT_FOUND);

    // A burst of two jobs: two instances, launched with the deployment's tags.
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(acme.submit(&["sleep", "2"]).await["id"].as_str().expect("id").to_owned());
    }
    let peak = wait_until("two ready cloud workers", Duration::from_secs(90), async || {
        let members = members(&admin, "cloud").await;
        let ready = members.iter().filter(|m| m["status"] == "ready" && m["worker_id"].is_string()).count();
        (ready == 2).then_some(members)
    })
    .await;
    let instances: Vec<String> = peak.iter().map(|m| m["instance"].as_str().expect("instance").to_owned()).collect();
    assert!(instances.iter().all(|id| id.starts_with("i-")), "{instances:?}");
    for instance in &instances {
        let worker = harness.worker(instance).expect("the harness runs a worker for each instance");
        assert!(worker.argv.windows(2).any(|pair| pair == ["--pool", "cloud"]), "{worker:?}");
    }
    // The throttled calls were retried, and no launch was made twice.
    assert_eq!(proxy.faulted("RunInstances"), 3);
    let tagged = clients
        .ec2
        .describe_instances()
        .filters(aws_sdk_ec2::types::Filter::builder().name("tag:hodei:deployment").values(&deployment).build())
        .send()
        .await
        .expect("describe");
    let launched: Vec<String> = tagged
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|instance| instance.instance_id().map(str::to_owned))
        .collect();
    assert_eq!(launched.len(), 2, "exactly one instance per member: {launched:?}");
    for id in &ids {
        let job = wait_until(&format!("job {id} to finish"), Duration::from_secs(60), async || {
            let job = acme.get(&format!("/api/v1/jobs/{id}")).await.body;
            (job["state"] == "succeeded").then_some(job)
        })
        .await;
        assert_eq!(job["attempt"], 1, "{job}");
    }

    // Idle for 2 s: scaled in, the instances terminated in the cloud, their workers gone.
    wait_until("the pool to scale in to 0", Duration::from_secs(90), async || {
        members(&admin, "cloud").await.is_empty().then_some(())
    })
    .await;
    for instance in &instances {
        let state = instance_state(&clients, instance).await;
        assert!(
            matches!(state, Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)),
            "{instance}: {state:?}"
        );
        assert!(harness.wait_for_no_worker(instance, Duration::from_secs(10)).await, "{instance} still has a worker");
    }
    let history = admin.get("/api/v1/pools/cloud/scaling/history?limit=500").await;
    assert_eq!(history.status, StatusCode::OK);
    let actions: Vec<&str> = history.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|entry| entry["action"].as_str())
        .filter(|action| *action != "hold")
        .collect();
    assert!(actions.contains(&"scale_out") && actions.contains(&"scale_in"), "{history:?}");

    // An instance tagged for this deployment and pool that no member knows (a launch whose
    // record was lost): terminated once it is 30 s old, so nothing keeps billing unseen.
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key("hodei:deployment").value(&deployment).build())
        .tags(Tag::builder().key("hodei:pool").value("cloud").build())
        .build();
    let stray = clients
        .ec2
        .run_instances()
        .image_id(&image)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .tag_specifications(tags)
        .send()
        .await
        .expect("run a stray instance");
    let stray = stray.instances()[0].instance_id().expect("id").to_owned();
    let launched = Instant::now();
    wait_until("the stray instance to be terminated", Duration::from_secs(90), async || {
        let state = instance_state(&clients, &stray).await;
        matches!(state, Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)).then_some(())
    })
    .await;
    assert!(launched.elapsed() >= Duration::from_secs(25), "terminated before its grace: {:?}", launched.elapsed());
    assert!(server.log_text().contains("terminating an instance no member knows"), "{}", server.log_text());
    harness.shutdown().await;
    server.stop().await;
}
