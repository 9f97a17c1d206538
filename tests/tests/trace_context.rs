//! The W3C trace context end to end, on the real `hodei serve` (with JSON logs) and a real
//! `hodei-worker`: a request's `traceparent` is continued (or a new one started when it is
//! absent or invalid) and returned, kept with the jobs it submits, shown with the job,
//! given to the job's process as `TRACEPARENT`, and written in the server's and the
//! worker's log lines.

use std::time::Duration;

use hodei_e2e::{free_port, start_worker_logging_to, wait_for_state, wait_until, Server, TestDatabase};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// `(trace id, parent id)` of a version-00 `traceparent`, checked strictly.
fn parts(traceparent: &str) -> (String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    let lowercase_hex = |field: &str, length: usize| {
        field.len() == length && field.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(
        fields.len() == 4
            && fields[0] == "00"
            && lowercase_hex(fields[1], 32)
            && lowercase_hex(fields[2], 16)
            && lowercase_hex(fields[3], 2)
            && fields[1] != "0".repeat(32)
            && fields[2] != "0".repeat(16),
        "not a valid traceparent: {traceparent:?}"
    );
    (fields[1].to_owned(), fields[2].to_owned())
}

/// The server's JSON log lines whose request span carries `trace_id`.
fn server_lines_of(server: &Server, trace_id: &str) -> Vec<Value> {
    server
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["span"]["trace_id"] == trace_id)
        .collect()
}

#[tokio::test]
async fn a_trace_context_flows_from_the_request_to_the_job_and_both_logs() {
    let database = TestDatabase::empty().await;
    let server = Server::spawn_configured(&database.url, free_port(), None, &[("HODEI_LOG_FORMAT", "json")]);
    server.wait_ready(Duration::from_secs(60)).await;
    let acme = server.tenant("acme").await;
    let worker_log = std::env::temp_dir().join(format!("hodei-e2e-trace-worker-{}.log", std::process::id()));
    let _worker = start_worker_logging_to(&server.url, "traced", &[], &worker_log);

    // A submission that carries a traceparent: the trace continues, with this hop's span.
    let incoming = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let spec = json!({"command": {
        "argv": ["sh", "-c", "echo \"got $TRACEPARENT\""],
        "env": {"TRACEPARENT": "00-11111111111111111111111111111111-1111111111111111-01"},
    }});
    let submitted = acme
        .send(Method::POST, "/api/v1/jobs", Some(spec.to_string().into_bytes()), &[("traceparent", &incoming)])
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED, "{submitted:?}");
    let answered = submitted.header("traceparent").expect("a traceparent in the response").to_owned();
    let (trace_id, span_id) = parts(&answered);
    assert_eq!(trace_id, TRACE_ID, "the caller's trace continues");
    assert_ne!(span_id, CALLER_SPAN, "the server's hop has a span of its own");
    assert!(answered.ends_with("-01"), "the caller's flags are kept: {answered}");
    // The job's env named TRACEPARENT: accepted, with a warning that it is replaced.
    let warnings = submitted.body["warnings"].to_string();
    assert!(warnings.contains("command.env.TRACEPARENT is replaced"), "{warnings}");

    // Kept with the job, and shown with it.
    let id = submitted.body["id"].as_str().expect("id").to_owned();
    assert_eq!(submitted.body["traceparent"], answered.as_str(), "{submitted:?}");
    let shown = acme.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(shown.status, StatusCode::OK, "{shown:?}");
    assert_eq!(shown.body["traceparent"], answered.as_str(), "{shown:?}");

    // The job ran with it as TRACEPARENT, over the value its env gave.
    let done = wait_for_state(&acme, &id, &["succeeded", "dead_lettered"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let output = acme.get(&format!("/api/v1/jobs/{id}/logs")).await;
    let printed: String =
        output.body["chunks"].as_array().expect("chunks").iter().filter_map(|chunk| chunk["data"].as_str()).collect();
    assert_eq!(printed.trim(), format!("got {answered}"), "{output:?}");

    // The worker's lines about the job carry the trace id.
    let worker_lines = wait_until("the worker to log the job's end", Duration::from_secs(10), async || {
        let text = std::fs::read_to_string(&worker_log).unwrap_or_default();
        let about_job: Vec<String> = text.lines().filter(|line| line.contains(&id)).map(str::to_owned).collect();
        about_job.iter().any(|line| line.contains("exited with code 0")).then_some(about_job)
    })
    .await;
    assert!(worker_lines.iter().any(|line| line.ends_with(": started")), "{worker_lines:?}");
    assert!(worker_lines.iter().all(|line| line.contains(&format!("trace_id {TRACE_ID}"))), "{worker_lines:?}");
    assert!(
        worker_lines.iter().any(|line| line.contains("the job's env sets TRACEPARENT")),
        "the replaced value is logged: {worker_lines:?}"
    );

    // The server's JSON log lines of the request carry the trace id.
    let lines = server_lines_of(&server, TRACE_ID);
    assert!(
        lines.iter().any(|line| line["fields"]["message"] == "request"
            && line["span"]["route"] == "/api/v1/jobs"
            && line["span"]["method"] == "POST"
            && line["fields"]["status"] == 201),
        "no log line of the submission carries its trace id: {lines:?}\n{}",
        server.log_text()
    );

    // A request without a traceparent gets a new trace; so does one with an invalid one
    // (uppercase hex), which is ignored, not refused.
    let plain = acme.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(plain.status, StatusCode::OK);
    let (fresh, _) = parts(plain.header("traceparent").expect("a generated traceparent"));
    assert_ne!(fresh, TRACE_ID);
    assert!(!server_lines_of(&server, &fresh).is_empty(), "the new trace id is in the log");
    let invalid = format!("00-{}-{CALLER_SPAN}-01", TRACE_ID.to_uppercase());
    let ignored = acme.send(Method::GET, &format!("/api/v1/jobs/{id}"), None, &[("traceparent", &invalid)]).await;
    assert_eq!(ignored.status, StatusCode::OK, "{ignored:?}");
    let (replaced, _) = parts(ignored.header("traceparent").expect("a generated traceparent"));
    assert!(replaced != TRACE_ID && replaced != fresh, "{replaced}");
    // Errors carry one too.
    let missing = server.anonymous().get("/api/v1/jobs").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    parts(missing.header("traceparent").expect("a traceparent on an error"));

    // A batch keeps its request's trace context with every job.
    let batch_trace = format!("00-{}-{CALLER_SPAN}-00", "ab".repeat(16));
    let batch = json!({"jobs": [{"command": {"argv": ["true"]}}, {"command": {"argv": ["true"]}}]});
    let batched = acme
        .send(
            Method::POST,
            "/api/v1/jobs/batch",
            Some(batch.to_string().into_bytes()),
            &[("traceparent", &batch_trace)],
        )
        .await;
    assert_eq!(batched.status, StatusCode::CREATED, "{batched:?}");
    let batch_answer = batched.header("traceparent").expect("a traceparent").to_owned();
    assert_eq!(parts(&batch_answer).0, "ab".repeat(16));
    assert!(batch_answer.ends_with("-00"), "{batch_answer}");
    for id in batched.body["ids"].as_array().expect("ids") {
        let job = acme.get(&format!("/api/v1/jobs/{}", id.as_str().expect("id"))).await;
        assert_eq!(job.body["traceparent"], batch_answer.as_str(), "{job:?}");
    }
    let _ = std::fs::remove_file(&worker_log);
}
