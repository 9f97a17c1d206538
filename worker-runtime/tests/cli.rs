//! The worker binary's command line, run as a real process.

use std::process::Command;

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hodei-worker"))
}

#[test]
fn rejects_an_api_url_that_is_not_http() {
    let output = worker().args(["--api-url", "ftp://example", "check"]).output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--api-url must start with http://"));
}

#[test]
fn check_fails_when_nothing_listens() {
    // Bind a port, then free it: nothing listens there while the check runs.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let output = worker().args(["--api-url", &format!("http://127.0.0.1:{port}"), "check"]).output().expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach the API"));
}
