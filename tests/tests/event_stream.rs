//! `GET /api/v1/events/stream`, the job event stream as Server-Sent Events, against the
//! real `hodei serve`: a client that disconnects and reconnects with `Last-Event-ID`
//! misses nothing and sees nothing twice; tenants see only their own jobs; filters by
//! kind and by queue; bad filters are refused. And, against the application served in
//! this process with a short keep-alive, an idle stream gets heartbeat comments.

use std::time::{Duration, Instant};

use hodei_e2e::{Client, Server, TestDatabase, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// An open stream and what is left of its last chunk.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    async fn open(server: &Server, key: &str, query: &str, last_event_id: Option<i64>) -> Stream {
        Stream::open_at(&server.url, key, query, last_event_id).await
    }

    async fn open_at(url: &str, key: &str, query: &str, last_event_id: Option<i64>) -> Stream {
        let mut request = reqwest::Client::new()
            .get(format!("{url}/api/v1/events/stream{query}"))
            .bearer_auth(key)
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("open the stream");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Stream { response, buffer: String::new() }
    }

    /// The next event: its stream position, kind and data.
    async fn next(&mut self) -> (i64, String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, None, None);
                for line in frame.lines() {
                    if let Some(value) = line.strip_prefix("id: ") {
                        id = value.parse().ok();
                    } else if let Some(value) = line.strip_prefix("event: ") {
                        kind = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(value).ok();
                    }
                }
                if let (Some(id), Some(kind), Some(data)) = (id, kind, data) {
                    return (id, kind, data);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("an event within 20 s")
                .expect("read the stream")
                .expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next frame as it was sent, whatever it holds (an event, a comment).
    async fn next_frame(&mut self, limit: Duration) -> String {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                return self.buffer.drain(..end + 2).collect();
            }
            let chunk = tokio::time::timeout(limit, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("a frame within {limit:?}"))
                .expect("read the stream")
                .expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events until (and with) `kind` for `job`.
    async fn until(&mut self, job: &str, kind: &str) -> Vec<(i64, String, Value)> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let done = event.1 == kind && event.2["job_id"] == job;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn a_follower_that_reconnects_misses_nothing_and_sees_only_its_tenant() {
    let database = TestDatabase::empty().await;
    let mut server = Server::start(&database.url).await;
    let acme = server.tenant("acme").await;
    let other = server.tenant("other").await;
    let key = acme.key().expect("a key").to_owned();

    let first = acme.submit(&["true"]).await["id"].as_str().expect("id").to_owned();
    let foreign = other.submit(&["true"]).await["id"].as_str().expect("id").to_owned();
    let mut stream = Stream::open(&server, &key, "", None).await;
    let before = stream.until(&first, "job.submitted").await;
    let last = before.last().expect("an event").0;
    drop(stream);

    // Missed while disconnected.
    let second = acme.submit(&["true"]).await["id"].as_str().expect("id").to_owned();
    acme.post(&format!("/api/v1/jobs/{second}/cancel"), serde_json::json!({})).await;
    let third = acme.submit(&["true"]).await["id"].as_str().expect("id").to_owned();
    let mut stream = Stream::open(&server, &key, "", Some(last)).await;
    let after = stream.until(&third, "job.submitted").await;
    let ids: Vec<i64> = after.iter().map(|event| event.0).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "in stream order: {ids:?}");
    assert!(ids[0] > last, "nothing seen twice: {ids:?} after {last}");
    let of = |job: &str, kind: &str| after.iter().any(|event| event.2["job_id"] == job && event.1 == kind);
    assert!(of(&second, "job.submitted") && of(&second, "job.cancelled"), "{after:?}");
    for (_, _, data) in before.iter().chain(&after) {
        assert_ne!(data["job_id"], foreign.as_str(), "another tenant's job");
        assert_eq!(data["tenant"], "acme");
    }

    // Filtered by kind, from the beginning.
    let mut cancelled = Stream::open(&server, &key, "?kind=job.cancelled", None).await;
    let (_, kind, data) = cancelled.next().await;
    assert_eq!((kind.as_str(), data["job_id"].as_str()), ("job.cancelled", Some(second.as_str())));

    // The admin sees every tenant.
    let mut all = Stream::open(&server, ADMIN_KEY, &format!("?job_id={foreign}"), None).await;
    assert_eq!(all.next().await.2["job_id"], foreign.as_str());

    // `hodei jobs watch ID` follows one job's events and ends once the job has finished.
    let watched = tokio::process::Command::new(hodei_e2e::binary("hodei"))
        .args(["jobs", "watch", &second, "--api-url", &server.url, "--api-key", &key])
        .output();
    let watched = tokio::time::timeout(Duration::from_secs(30), watched).await.expect("watch ends").expect("run");
    assert!(watched.status.success(), "{}", String::from_utf8_lossy(&watched.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&watched.stdout).lines().map(str::to_owned).collect();
    assert!(lines.first().is_some_and(|line| line.contains("job.submitted") && line.contains(&second)), "{lines:?}");
    assert!(lines.last().is_some_and(|line| line.contains("job.cancelled") && line.contains("cancelled")), "{lines:?}");

    // Bad filters change nothing and say why.
    let client = Client::new(&server.url, Some(&key));
    let reply = client.get("/api/v1/events/stream?kind=job.exploded").await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(reply.body["detail"].as_str().unwrap_or_default().contains("kind: unknown event kind \"job.exploded\""));
    let reply =
        client.send(reqwest::Method::GET, "/api/v1/events/stream", None, &[("Last-Event-ID", "yesterday")]).await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "invalid_header");
    server.stop().await;
}

#[tokio::test]
async fn the_queue_filter_passes_only_that_queues_events() {
    let database = TestDatabase::empty().await;
    let mut server = Server::start(&database.url).await;
    let created = server.admin().post("/api/v1/queues", json!({"name": "reports"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let acme = server.tenant("acme").await;
    let key = acme.key().expect("a key").to_owned();

    // Interleaved: jobs in `default` before, between and after those in `reports`.
    let mut reports = Vec::new();
    let mut elsewhere = Vec::new();
    for queue in ["default", "reports", "default", "reports", "default"] {
        let reply = acme.post("/api/v1/jobs", json!({"queue": queue, "command": {"argv": ["true"]}})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        let id = reply.body["id"].as_str().expect("id").to_owned();
        if queue == "reports" {
            reports.push(id)
        } else {
            elsewhere.push(id)
        }
    }
    let cancelled = acme.post(&format!("/api/v1/jobs/{}/cancel", reports[0]), json!({})).await;
    assert_eq!(cancelled.body["state"], "cancelled", "{cancelled:?}");
    let last = elsewhere.last().expect("a job").clone();
    let cancelled = acme.post(&format!("/api/v1/jobs/{last}/cancel"), json!({})).await;
    assert_eq!(cancelled.body["state"], "cancelled", "{cancelled:?}");

    let mut stream = Stream::open(&server, &key, "?queue=reports", None).await;
    let seen = stream.until(&reports[0], "job.cancelled").await;
    let jobs: Vec<&str> = seen.iter().filter_map(|event| event.2["job_id"].as_str()).collect();
    assert!(jobs.iter().all(|job| reports.iter().any(|id| id == job)), "only `reports` jobs: {seen:?}");
    for id in &reports {
        assert!(jobs.contains(&id.as_str()), "{id} submitted to `reports` is in the stream: {seen:?}");
    }
    // Nothing of `default` follows either: the last event of the whole stream (the
    // cancel of a `default` job) is not sent; the stream stays quiet.
    let quiet = tokio::time::timeout(Duration::from_secs(2), stream.next()).await;
    assert!(quiet.is_err(), "an event of another queue: {quiet:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeat_comments() {
    // Far shorter than the 15 s default: heartbeats that arrive within the deadline below
    // come from the interval the application was given.
    let keep_alive = Duration::from_millis(200);
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let tenant = hodei_api::store::tenants::create(&pool, "acme", 1).await.expect("tenant");
    let key = hodei_api::auth::generate_key().expect("a key");
    hodei_api::store::api_keys::insert_tenant_key(&pool, tenant.id, &key, "stream").await.expect("store the key");
    let state = hodei_api::http::AppState::new(pool, hodei_core::ordering::PolicyRegistry::shipped())
        .with_event_keep_alive(keep_alive);
    let shutdown = state.shutdown.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let served = tokio::spawn(hodei_api::listener::serve(
        listener,
        hodei_api::http::app(state),
        None,
        hodei_api::listener::ConnectionLimits::default(),
        shutdown.clone(),
    ));

    // Nothing has happened: every frame is a heartbeat comment, and they keep coming.
    let mut stream = Stream::open_at(&url, &key.plaintext, "", None).await;
    let started = Instant::now();
    for _ in 0..3 {
        let frame = stream.next_frame(Duration::from_secs(5)).await;
        assert_eq!(frame, ": heartbeat\n\n", "a heartbeat comment");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "three heartbeats took {:?}", started.elapsed());

    drop(stream);
    shutdown.cancel();
    served.await.expect("the server task").expect("the server stops cleanly");
}
