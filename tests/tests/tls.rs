//! TLS end to end: `hodei serve` terminates TLS with a certificate signed by a private CA
//! the test makes; a real `hodei-worker` given that CA registers, runs a job and reports
//! over HTTPS, and so does the CLI; a worker or CLI that does not trust the CA is refused
//! with a message that says why.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hodei_e2e::{binary, free_port, Server, TestDatabase, ADMIN_KEY, WORKER_REGISTRATION_TOKEN};
use serde_json::{json, Value};

/// A CA, and a server certificate for 127.0.0.1 and localhost signed by it, as PEM files.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn issue(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hodei-tls-{name}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("certificate dir");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("hodei test CA {name}"));
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let server_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server = server_params.signed_by(&server_key, &ca, &ca_key).expect("server certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        std::fs::write(dir.join("server.pem"), server.pem()).expect("write");
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("write");
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("ca");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client")
}

async fn call(client: &reqwest::Client, method: reqwest::Method, url: &str, key: &str, body: Option<Value>) -> Value {
    let mut request = client.request(method, url).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("reaches the server over TLS");
    assert!(response.status().is_success(), "{url}: {}", response.status());
    response.json().await.expect("json")
}

#[tokio::test]
async fn workers_and_the_cli_speak_https_with_a_private_ca_and_refuse_an_unknown_one() {
    let certificates = Certificates::issue("good");
    let stranger = Certificates::issue("stranger");
    let database = TestDatabase::empty().await;
    let port = free_port();
    let (cert, key) = (certificates.path("server.pem"), certificates.path("server.key"));
    let _server = Server::spawn_configured(
        &database.url,
        port,
        None,
        &[("HODEI_TLS_CERT_FILE", cert.to_str().expect("path")), ("HODEI_TLS_KEY_FILE", key.to_str().expect("path"))],
    );
    let url = format!("https://127.0.0.1:{port}");
    let client = trusting(&certificates.path("ca.pem"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "hodei serve did not come up over TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()), "clear text is not served");

    // A worker that trusts the CA registers, runs a job and reports, all through TLS.
    let ca = certificates.path("ca.pem");
    let mut worker = tokio::process::Command::new(binary("hodei-worker"))
        .args(["--api-url", &url, "--ca-file", ca.to_str().expect("path"), "run", "--name", "tls"])
        .env("HODEI_WORKER_REGISTRATION_TOKEN", WORKER_REGISTRATION_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start hodei-worker");
    let tenant = call(
        &client,
        reqwest::Method::POST,
        &format!("{url}/api/v1/tenants"),
        ADMIN_KEY,
        Some(json!({"name": "acme"})),
    )
    .await;
    assert_eq!(tenant["name"], "acme");
    let tenant_key = call(
        &client,
        reqwest::Method::POST,
        &format!("{url}/api/v1/tenants/acme/api-keys"),
        ADMIN_KEY,
        Some(json!({"name": "tls"})),
    )
    .await["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let job = call(
        &client,
        reqwest::Method::POST,
        &format!("{url}/api/v1/jobs"),
        &tenant_key,
        Some(json!({"command": {"argv": ["echo", "over tls"]}})),
    )
    .await;
    let id = job["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = call(&client, reqwest::Method::GET, &format!("{url}/api/v1/jobs/{id}"), &tenant_key, None).await;
        if current["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not run over TLS: {current}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The CLI, given the CA, reads the job's output over TLS.
    let cli = |ca: &Path| {
        std::process::Command::new(binary("hodei"))
            .args(["jobs", "logs", &id])
            .args(["--api-url", &url, "--api-key", &tenant_key, "--ca-file", ca.to_str().expect("path")])
            .output()
            .expect("hodei jobs logs")
    };
    let trusted = cli(&ca);
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    assert_eq!(String::from_utf8_lossy(&trusted.stdout), "over tls\n");

    // Another CA is refused, clearly, by the CLI and by a worker.
    let untrusted = cli(&stranger.path("ca.pem"));
    let said = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{said}");
    assert!(said.contains("certificate") && said.contains("--ca-file"), "{said}");
    let refused = tokio::process::Command::new(binary("hodei-worker"))
        .args(["--api-url", &url, "--ca-file", stranger.path("ca.pem").to_str().expect("path"), "run"])
        .env("HODEI_WORKER_REGISTRATION_TOKEN", WORKER_REGISTRATION_TOKEN)
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(30), refused).await.expect("exits").expect("output");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("certificate") && said.contains("--ca-file"), "{said}");
    let _ = worker.start_kill();
}
