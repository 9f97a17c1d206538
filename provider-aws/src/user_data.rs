//! The boot script of a worker's instance, and how to read it back.
//!
//! The script's contract is what `hodei-worker.service` relies on: it writes
//! `/etc/hodei/worker.env` (mode 0600) with exactly the keys `HODEI_API_URL`, `HODEI_POOL`,
//! `HODEI_INSTANCE_ID`, `HODEI_WORKER_NAME`, `HODEI_WORKER_ARGS` and
//! `HODEI_WORKER_REGISTRATION_TOKEN`, one `KEY=value` a line, then enables and starts the
//! unit, which runs `hodei-worker run --pool ${HODEI_POOL} --instance-id ${HODEI_INSTANCE_ID}
//! --name ${HODEI_WORKER_NAME} $HODEI_WORKER_ARGS` (the last split on whitespace).
//!
//! The same script, for `aws-asg` launch templates, is the Terraform template
//! `infra/terraform/modules/worker_pool/user_data.sh.tftpl`; a test renders both and
//! compares them line by line.

use std::collections::BTreeMap;

use hodei_core::pool::PoolSpec;
use uuid::Uuid;

use crate::AwsSettings;

/// Where the script takes the worker's instance id from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceIdSource {
    /// `aws-ec2`: one instance per member, whose id is the member's.
    Member(Uuid),
    /// `aws-asg`: the instance's own id, read from the instance metadata (IMDSv2) at boot.
    Metadata,
}

/// The file the script writes and the unit reads.
pub const WORKER_ENV_PATH: &str = "/etc/hodei/worker.env";
/// The here-document delimiter around the file's lines.
const ENV_DELIMITER: &str = "HODEI_ENV";
/// How a value refers to the instance id read from the metadata at boot: what
/// `parse_worker_env` leaves in place of it, for the caller to substitute.
pub const METADATA_INSTANCE_ID: &str = "${instance_id}";
/// How the token line refers to the token read from SSM at boot.
pub const FETCHED_REGISTRATION_TOKEN: &str = "${registration_token}";

/// The extra flags of `hodei-worker run` for the pool's template: the `HODEI_WORKER_ARGS`
/// line (and the Terraform template's `worker_args`).
pub fn worker_args(settings: &AwsSettings, pool: &PoolSpec) -> String {
    let template = &pool.template;
    let mut args = vec![format!("--slots {}", template.slots())];
    if let Some(cpu) = template.cpu_millis {
        args.push(format!("--cpu-millis {cpu}"));
    }
    if let Some(memory) = template.memory_mib {
        args.push(format!("--memory-mib {memory}"));
    }
    for (key, value) in &template.labels {
        args.push(format!("--label {key}={value}"));
    }
    args.push(format!("--drain-timeout-seconds {}", settings.drain_timeout_seconds));
    args.join(" ")
}

/// The worker's name: the pool and the member's last 8 hex digits (as the `local` provider
/// names them), or the pool and the instance id.
pub fn worker_name(pool: &str, instance_id: InstanceIdSource) -> String {
    match instance_id {
        InstanceIdSource::Member(member) => {
            let member = member.simple().to_string();
            format!("{pool}-{}", &member[member.len() - 8..])
        }
        InstanceIdSource::Metadata => format!("{pool}-{METADATA_INSTANCE_ID}"),
    }
}

/// The region the pool's instances run in.
pub(crate) fn region_of<'a>(settings: &'a AwsSettings, pool: &'a PoolSpec) -> &'a str {
    pool.cloud.as_ref().and_then(|cloud| cloud.region.as_deref()).unwrap_or(&settings.region)
}

/// The instance's boot script (EC2 user data, before base64).
pub fn render_user_data(settings: &AwsSettings, pool: &PoolSpec, instance_id: InstanceIdSource) -> String {
    let (id, name) = match instance_id {
        InstanceIdSource::Member(member) => {
            (heredoc_literal(&member.to_string()), heredoc_literal(&worker_name(&pool.id, instance_id)))
        }
        InstanceIdSource::Metadata => {
            (METADATA_INSTANCE_ID.to_owned(), format!("{}-{METADATA_INSTANCE_ID}", heredoc_literal(&pool.id)))
        }
    };
    render(&Script {
        worker_binary: &settings.worker_binary,
        metadata: matches!(instance_id, InstanceIdSource::Metadata),
        region: region_of(settings, pool),
        token_parameter: settings.registration_token_parameter.as_deref(),
        api_url: &heredoc_literal(&settings.api_urls),
        pool: &heredoc_literal(&pool.id),
        instance_id: &id,
        name: &name,
        worker_args: &heredoc_literal(&worker_args(settings, pool)),
    })
}

struct Script<'a> {
    worker_binary: &'a str,
    metadata: bool,
    region: &'a str,
    token_parameter: Option<&'a str>,
    // Already escaped for the here-document.
    api_url: &'a str,
    pool: &'a str,
    instance_id: &'a str,
    name: &'a str,
    worker_args: &'a str,
}

fn render(script: &Script<'_>) -> String {
    let mut out = String::new();
    let mut line = |text: &str| {
        out.push_str(text);
        out.push('\n');
    };
    line("#!/bin/bash");
    line("# Hodei worker bootstrap: writes /etc/hodei/worker.env and starts hodei-worker.service.");
    line("set -euo pipefail");
    line("umask 077");
    let binary = single_quoted(script.worker_binary);
    line(&format!("if [ ! -x {binary} ]; then"));
    line(&format!("  echo \"hodei: \"{binary}\" is missing\" >&2"));
    line("  exit 1");
    line("fi");
    if script.metadata {
        line("imds_token=\"$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' http://169.254.169.254/latest/api/token)\"");
        line("instance_id=\"$(curl -fsS -H \"X-aws-ec2-metadata-token: $imds_token\" http://169.254.169.254/latest/meta-data/instance-id)\"");
    }
    match script.token_parameter {
        Some(parameter) => line(&format!(
            "registration_token=\"$(aws ssm get-parameter --with-decryption --region {} --name {} --query Parameter.Value --output text)\"",
            single_quoted(script.region),
            single_quoted(parameter)
        )),
        None => line("registration_token=''"),
    }
    line("install -d -m 0755 /etc/hodei");
    line(&format!("cat > {WORKER_ENV_PATH} <<{ENV_DELIMITER}"));
    line(&format!("HODEI_API_URL={}", script.api_url));
    line(&format!("HODEI_POOL={}", script.pool));
    line(&format!("HODEI_INSTANCE_ID={}", script.instance_id));
    line(&format!("HODEI_WORKER_NAME={}", script.name));
    line(&format!("HODEI_WORKER_ARGS={}", script.worker_args));
    line(&format!("HODEI_WORKER_REGISTRATION_TOKEN={FETCHED_REGISTRATION_TOKEN}"));
    line(ENV_DELIMITER);
    line(&format!("chmod 0600 {WORKER_ENV_PATH}"));
    line("systemctl enable --now hodei-worker");
    out
}

/// A value as a literal line of an unquoted here-document: `\`, `$` and `` ` `` escaped,
/// line breaks (which no value may have) turned into spaces.
fn heredoc_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' | '$' | '`' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A shell word in single quotes.
fn single_quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The `KEY=value` lines the script writes to `/etc/hodei/worker.env`, as the shell would
/// write them except for the values it computes at boot, which are left as written:
/// [`METADATA_INSTANCE_ID`] and [`FETCHED_REGISTRATION_TOKEN`]. Empty if the text is not
/// such a script.
pub fn parse_worker_env(user_data: &str) -> BTreeMap<String, String> {
    let opening = format!("cat > {WORKER_ENV_PATH} <<{ENV_DELIMITER}");
    let mut env = BTreeMap::new();
    let mut lines = user_data.lines().skip_while(|line| line.trim_end() != opening);
    if lines.next().is_none() {
        return env;
    }
    for line in lines {
        if line == ENV_DELIMITER {
            break;
        }
        if let Some((key, value)) = line.split_once('=') {
            env.insert(key.to_owned(), unescape_heredoc(value));
        }
    }
    env
}

fn unescape_heredoc(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&next) = chars.peek() {
                if matches!(next, '\\' | '$' | '`') {
                    out.push(next);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// The arguments (after the program) of the command `hodei-worker.service` runs with this
/// environment file: `run --pool … --instance-id … --name …` and `HODEI_WORKER_ARGS` split
/// on whitespace, as systemd splits an unbraced `$VAR`.
pub fn worker_argv(env: &BTreeMap<String, String>) -> Vec<String> {
    let get = |key: &str| env.get(key).cloned().unwrap_or_default();
    let mut argv = vec![
        "run".to_owned(),
        "--pool".to_owned(),
        get("HODEI_POOL"),
        "--instance-id".to_owned(),
        get("HODEI_INSTANCE_ID"),
        "--name".to_owned(),
        get("HODEI_WORKER_NAME"),
    ];
    argv.extend(get("HODEI_WORKER_ARGS").split_whitespace().map(str::to_owned));
    argv
}

/// Whether a label key or value can go on the worker's command line as is: no whitespace
/// (systemd splits `$HODEI_WORKER_ARGS` on it) and nothing a shell or systemd would read.
pub(crate) fn label_is_safe(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | ':' | '@' | '+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AwsSettings {
        AwsSettings {
            region: "eu-west-1".into(),
            endpoint_url: None,
            deployment: "prod".into(),
            api_urls: "https://hodei-1.internal:8443,https://hodei-2.internal:8443".into(),
            registration_token_parameter: Some("/hodei/prod/registration-token".into()),
            worker_binary: "/usr/local/bin/hodei-worker".into(),
            drain_timeout_seconds: 120,
        }
    }

    fn pool() -> PoolSpec {
        let mut pool: PoolSpec =
            serde_json::from_value(serde_json::json!({"id": "gpu", "provider": "aws-ec2"})).expect("a pool");
        pool.template.slots = Some(4);
        pool.template.cpu_millis = Some(8000);
        pool.template.memory_mib = Some(32768);
        pool.template.labels.insert("accelerator".into(), "nvidia-t4".into());
        pool.template.labels.insert("zone".into(), "eu-west-1a".into());
        pool
    }

    #[test]
    fn a_member_script_writes_the_env_file() {
        let member = Uuid::parse_str("0190a5c2-0000-7000-8000-00000000abcd").expect("uuid");
        let script = render_user_data(&settings(), &pool(), InstanceIdSource::Member(member));
        assert!(script.starts_with("#!/bin/bash\n"));
        assert!(script.contains("set -euo pipefail\n"));
        assert!(script.contains(
            "aws ssm get-parameter --with-decryption --region 'eu-west-1' --name '/hodei/prod/registration-token'"
        ));
        assert!(script.trim_end().ends_with("systemctl enable --now hodei-worker"));
        let env = parse_worker_env(&script);
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "HODEI_API_URL",
                "HODEI_INSTANCE_ID",
                "HODEI_POOL",
                "HODEI_WORKER_ARGS",
                "HODEI_WORKER_NAME",
                "HODEI_WORKER_REGISTRATION_TOKEN"
            ]
        );
        assert_eq!(env["HODEI_INSTANCE_ID"], member.to_string());
        assert_eq!(env["HODEI_WORKER_NAME"], "gpu-0000abcd");
        assert_eq!(env["HODEI_WORKER_REGISTRATION_TOKEN"], FETCHED_REGISTRATION_TOKEN);
        assert_eq!(
            worker_argv(&env),
            [
                "run",
                "--pool",
                "gpu",
                "--instance-id",
                &member.to_string(),
                "--name",
                "gpu-0000abcd",
                "--slots",
                "4",
                "--cpu-millis",
                "8000",
                "--memory-mib",
                "32768",
                "--label",
                "accelerator=nvidia-t4",
                "--label",
                "zone=eu-west-1a",
                "--drain-timeout-seconds",
                "120"
            ]
        );
    }

    #[test]
    fn values_are_escaped_and_read_back() {
        let mut settings = settings();
        settings.api_urls = "https://a/$(reboot)`x`\\y".into();
        settings.registration_token_parameter = Some("it's".into());
        let script = render_user_data(&settings, &pool(), InstanceIdSource::Metadata);
        assert!(script.contains("HODEI_API_URL=https://a/\\$(reboot)\\`x\\`\\\\y\n"));
        assert!(script.contains("--name 'it'\\''s'"));
        let env = parse_worker_env(&script);
        assert_eq!(env["HODEI_API_URL"], settings.api_urls);
        assert_eq!(env["HODEI_INSTANCE_ID"], METADATA_INSTANCE_ID);
        assert_eq!(env["HODEI_WORKER_NAME"], format!("gpu-{METADATA_INSTANCE_ID}"));
    }

    #[test]
    fn no_parameter_no_fetch() {
        let mut settings = settings();
        settings.registration_token_parameter = None;
        let script = render_user_data(&settings, &pool(), InstanceIdSource::Metadata);
        assert!(!script.contains("aws ssm"));
        assert!(script.contains("registration_token=''\n"));
    }

    #[test]
    fn not_a_script_parses_empty() {
        assert!(parse_worker_env("#!/bin/sh\necho hi\n").is_empty());
    }
}
