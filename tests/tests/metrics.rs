//! `/metrics` from a real `hodei serve` with a real `hodei-worker`: the scrape passes
//! `promtool check metrics`, holds the families recorded where events happen (evictions
//! among the dead letters, what a tenant's running jobs hold, the reuse of a worker the
//! lease reaper marked gone), and can be served on its own port; every metric the dashboards and the alert rules name is in a
//! real scrape, and the rules pass `promtool check rules` and `promtool test rules`.
//! promtool comes from `.ci/promtool` (Debian's `prometheus` package, unpacked under the
//! user's cache); the tests fail, saying why, when it cannot be had.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hodei_e2e::{free_port, start_system, start_worker, wait_for_state, Server, TestDatabase};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn observability() -> PathBuf {
    repository().join("infra/observability")
}

/// The promtool binary `.ci/promtool` prints (installing it when missing).
fn promtool() -> PathBuf {
    let output = Command::new(repository().join(".ci/promtool"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run .ci/promtool (bash)");
    assert!(output.status.success(), ".ci/promtool could not provide promtool (see its message above)");
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(path.is_file(), ".ci/promtool printed {path:?}, which is not a file");
    path
}

/// Runs promtool with `arguments` (and `stdin`), asserting it succeeds.
fn run_promtool(arguments: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(promtool())
        .args(arguments)
        .current_dir(observability())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or_default().as_bytes()).expect("write promtool's input");
    drop(input);
    let output = child.wait_with_output().expect("promtool ran");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {arguments:?} failed:\n{text}");
    text
}

/// A scrape as Prometheus makes it (asking for OpenMetrics).
async fn scrape(url: &str) -> (StatusCode, String, String) {
    scrape_accepting(url, "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5").await
}

async fn scrape_accepting(url: &str, accept: &str) -> (StatusCode, String, String) {
    let response =
        reqwest::Client::new().get(format!("{url}/metrics")).header("accept", accept).send().await.expect("scrape");
    let status = response.status();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, content_type, response.text().await.expect("body"))
}

/// Scrapes until `wanted` appears (counters of events that are recorded just after the
/// answer a client sees), up to 30 s.
async fn scrape_until(url: &str, wanted: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, text) = scrape(url).await;
        if wanted.iter().all(|line| text.contains(line)) {
            return text;
        }
        let missing: Vec<&&str> = wanted.iter().filter(|line| !text.contains(**line)).collect();
        assert!(Instant::now() < deadline, "never scraped {missing:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every metric name a scrape declares: gauges by name, counters with `_total`,
/// histograms with `_bucket`, `_sum` and `_count`.
fn declared_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The `hodei_` metric names a PromQL expression reads (label values and templates
/// excluded: quoted strings are skipped).
fn metric_names(expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut unquoted = String::new();
    let mut quote: Option<char> = None;
    for c in expression.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' || c == '`' => {
                quote = Some(c);
                unquoted.push(' ');
            }
            None => unquoted.push(c),
        }
    }
    for word in unquoted.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if word.starts_with("hodei_") {
            names.insert(word.to_owned());
        }
    }
    names
}

/// Every `expr` and templating `query` in a dashboard, recursively.
fn dashboard_expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(expression)) => out.push(expression.clone()),
                    _ => dashboard_expressions(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| dashboard_expressions(item, out)),
        _ => {}
    }
}

fn all_expressions() -> Vec<(String, String)> {
    let mut expressions = Vec::new();
    for dashboard in ["overview.json", "queues.json", "pools.json", "tenants.json", "cost.json"] {
        let text = std::fs::read_to_string(observability().join(dashboard)).expect("read a dashboard");
        let document: Value = serde_json::from_str(&text).unwrap_or_else(|error| panic!("{dashboard}: {error}"));
        let templating = document["templating"]["list"].as_array().expect("templating");
        assert!(
            templating.iter().any(|variable| variable["type"] == "datasource" && variable["query"] == "prometheus"),
            "{dashboard} has no Prometheus datasource variable"
        );
        let mut found = Vec::new();
        dashboard_expressions(&document, &mut found);
        assert!(!found.is_empty(), "{dashboard} has no expressions");
        expressions.extend(found.into_iter().map(|expression| (dashboard.to_owned(), expression)));
    }
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(observability().join("alerts.yml")).expect("read alerts.yml"))
            .expect("alerts.yml is YAML");
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let expression = rule["expr"].as_str().expect("expr").to_owned();
            expressions.push((format!("alerts.yml {}", rule["alert"].as_str().unwrap_or("?")), expression));
        }
    }
    expressions
}

#[tokio::test]
async fn a_real_scrape_passes_promtool_and_holds_what_dashboards_and_alerts_read() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let mut worker = start_worker(&system.server.url, "metrics-worker", &["--slots", "2"]);
    let mut ids = Vec::new();
    for argv in [vec!["true"], vec!["true"], vec!["false"]] {
        let reply = acme.post("/api/v1/jobs", json!({"command": {"argv": argv}, "max_attempts": 1})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        ids.push(reply.body["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        wait_for_state(&acme, id, &["succeeded", "dead_lettered"]).await;
    }
    // A job cancelled while it waits (for its not-before time, an hour away).
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let waiting = acme.post("/api/v1/jobs", json!({"command": {"argv": ["true"]}, "not_before": later})).await;
    let waiting = waiting.body["id"].as_str().unwrap_or_else(|| panic!("{waiting:?}")).to_owned();
    let cancelled = acme.post(&format!("/api/v1/jobs/{waiting}/cancel"), json!({})).await;
    assert_eq!(cancelled.body["state"], "cancelled", "{cancelled:?}");
    // A full `evict_lowest` queue takes a higher-priority job in the place of a lower one,
    // which is dead-lettered. Their label is offered by no worker, so both would wait.
    let bounded = json!({"name": "bounded", "policy": "priority", "max_size": 1, "overflow": "evict_lowest"});
    let created = system.server.admin().post("/api/v1/queues", bounded).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    for priority in [1, 9] {
        let job = json!({"queue": "bounded", "priority": priority, "command": {"argv": ["true"]},
                         "resources": {"labels": {"gpu": "none"}}});
        let reply = acme.post("/api/v1/jobs", job).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    }

    // A finished job of a queue deleted since, run again: dead-lettered (`queue_deleted`).
    let admin = system.server.admin();
    let created = admin.post("/api/v1/queues", json!({"name": "doomed"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let doomed = json!({"queue": "doomed", "command": {"argv": ["true"]}, "not_before": later});
    let doomed = acme.post("/api/v1/jobs", doomed).await;
    let doomed = doomed.body["id"].as_str().unwrap_or_else(|| panic!("{doomed:?}")).to_owned();
    let cancelled = acme.post(&format!("/api/v1/jobs/{doomed}/cancel"), json!({})).await;
    assert_eq!(cancelled.body["state"], "cancelled", "{cancelled:?}");
    assert_eq!(admin.delete("/api/v1/queues/doomed").await.status, StatusCode::NO_CONTENT);
    let retried = acme.post("/api/v1/jobs/retry", json!({"queue": "doomed"})).await;
    assert_eq!(retried.body["ids"], json!([]), "{retried:?}");
    assert_eq!(acme.get(&format!("/api/v1/jobs/{doomed}")).await.body["dead_letter_reason"], "queue_deleted");

    let text = scrape_until(
        &system.server.url,
        &[
            "hodei_jobs_submitted_total{queue=\"default\",tenant=\"acme\",decision=\"accepted\"} 4",
            "hodei_job_results_total{outcome=\"succeeded\"} 2",
            "hodei_job_results_total{outcome=\"dead_lettered\"} 1",
            "hodei_dead_letters_total{reason=",
            "hodei_dead_letters_total{reason=\"evicted\"} 1",
            "hodei_dead_letters_total{reason=\"queue_deleted\"} 1",
            "hodei_queue_overflow_total{queue=\"bounded\",mode=\"evict_lowest\"} 1",
            "hodei_assignments_total{outcome=\"started\"} 3",
            "hodei_jobs_abandoned_total{queue=\"default\"} 1",
            "hodei_dispatch_wait_seconds_count{queue=\"default\"} 3",
            "hodei_job_submit_to_started_seconds_count 3",
            "hodei_workers{pool=\"default\",state=\"idle\"} 1",
            "route=\"/api/v1/jobs/{id}\",status=\"2xx\"",
            "hodei_queue_length{queue=\"default\"} 0",
        ],
    )
    .await;
    assert!(text.contains("hodei_worker_heartbeats_total"), "{text}");
    assert!(!text.contains(&ids[0]), "a job id is never a label:\n{text}");
    let (status, content_type, text) = scrape(&system.server.url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");

    assert!(text.ends_with("# EOF\n"), "{text}");
    // promtool reads the classic text format, which a scraper that does not ask for
    // OpenMetrics gets: the same samples.
    let (status, content_type, classic) = scrape_accepting(&system.server.url, "text/plain").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    assert!(classic.contains("# TYPE hodei_jobs_submitted_total counter"), "{classic}");
    run_promtool(&["check", "metrics"], Some(&classic));

    let declared = declared_names(&text);
    let mut missing = Vec::new();
    for (source, expression) in all_expressions() {
        for name in metric_names(&expression) {
            if !declared.contains(&name) {
                missing.push(format!("{source}: {name} (in {expression})"));
            }
        }
    }
    assert!(missing.is_empty(), "metrics that a scrape does not declare:\n{}\n\nscrape:\n{text}", missing.join("\n"));

    run_promtool(&["check", "rules", "alerts.yml"], None);
    run_promtool(&["test", "rules", "alerts_test.yml"], None);

    // What a tenant's running job holds, while it runs.
    let long = json!({"command": {"argv": ["sleep", "30"]}, "resources": {"cpu_millis": 250, "memory_mib": 128}});
    let long = acme.post("/api/v1/jobs", long).await;
    let long = long.body["id"].as_str().unwrap_or_else(|| panic!("{long:?}")).to_owned();
    wait_for_state(&acme, &long, &["running"]).await;
    scrape_until(
        &system.server.url,
        &[
            "hodei_tenant_running_jobs{tenant=\"acme\"} 1.0",
            "hodei_tenant_cpu_cores{tenant=\"acme\"} 0.25",
            "hodei_tenant_memory_bytes{tenant=\"acme\"} 134217728.0",
        ],
    )
    .await;
    let stopping = acme.post(&format!("/api/v1/jobs/{long}/cancel"), json!({})).await;
    assert_eq!(stopping.status, StatusCode::OK, "{stopping:?}");
    wait_for_state(&acme, &long, &["cancelled"]).await;
    scrape_until(&system.server.url, &["hodei_tenant_running_jobs{tenant=\"acme\"} 0.0"]).await;

    // A worker that dies without deregistering is marked gone by the lease reaper, and
    // how many jobs it ran is observed as for one that deregisters.
    let reuse = "hodei_worker_jobs_run_count{pool=\"default\"}";
    assert!(!text.contains(reuse), "no worker has left yet:\n{text}");
    worker.kill().await.expect("kill the worker");
    scrape_until(&system.server.url, &["hodei_worker_jobs_run_count{pool=\"default\"} 1"]).await;
}

#[tokio::test]
async fn metrics_can_have_a_port_of_their_own() {
    let database = TestDatabase::empty().await;
    let metrics_port = free_port();
    let port = free_port();
    let server =
        Server::spawn_configured(&database.url, port, None, &[("HODEI_PROMETHEUS_PORT", &metrics_port.to_string())]);
    server.wait_ready(Duration::from_secs(60)).await;
    let on_api = server.anonymous().get("/metrics").await;
    on_api.assert_problem(StatusCode::NOT_FOUND, "not_found");
    let (status, content_type, text) = scrape(&format!("http://127.0.0.1:{metrics_port}")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(text.contains("# TYPE hodei_queue_length gauge"), "{text}");
    // The API's request that was refused is counted, under the route it matched.
    assert!(text.contains("route=\"/metrics\",status=\"4xx\""), "{text}");
    let elsewhere = reqwest::get(format!("http://127.0.0.1:{metrics_port}/api/v1/jobs")).await.expect("get");
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    drop(server);
}
