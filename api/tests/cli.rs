//! The `hodei` binary's own commands, run as real processes.

use std::process::Command;

fn hodei() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hodei"));
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn write_config(contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("hodei-cli-{}-{}.yaml", std::process::id(), uuid::Uuid::now_v7()));
    std::fs::write(&path, contents).expect("write config");
    path
}

#[test]
fn config_check_accepts_a_valid_file() {
    let path = write_config("listen: 127.0.0.1:9000\ndatabase_url: postgres://localhost/hodei\n");
    let output = hodei().args(["config", "check"]).arg(&path).output().expect("runs");
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration is valid"));
}

#[test]
fn config_check_names_the_bad_field_and_exits_2() {
    let path = write_config("listen: 127.0.0.1:9000\ndatabase_max_connections: 0\n");
    let output = hodei().args(["config", "check"]).arg(&path).output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("database_max_connections: must be between 1 and 1000, got 0"), "{stderr}");

    let path = write_config("listen: [not, an, address]\n");
    let output = hodei().args(["config", "check"]).arg(&path).output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("listen"), "{output:?}");
}

#[test]
fn environment_overrides_are_validated_too() {
    let path = write_config("listen: 127.0.0.1:9000\n");
    let output = hodei()
        .args(["config", "check"])
        .arg(&path)
        .env("HODEI_BOOTSTRAP_ADMIN_KEY", "too-short")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("bootstrap_admin_key: must be at least 32 characters"));
}

#[test]
fn serve_without_a_database_url_says_so() {
    let output = hodei().arg("serve").output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("database_url: required"), "{output:?}");
}

#[test]
fn openapi_command_prints_the_committed_document() {
    let output = hodei().arg("openapi").output().expect("runs");
    assert!(output.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json")).expect("committed");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim_end(), committed.trim_end());
}
