//! The Terraform template of the boot script (for `aws-asg` launch templates) and the
//! `aws-ec2` provider's script are the same script.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use hodei_core::pool::PoolSpec;
use hodei_provider_aws::{parse_worker_env, render_user_data, worker_args, AwsSettings, InstanceIdSource};

const TEMPLATE: &str = "../infra/terraform/modules/worker_pool/user_data.sh.tftpl";

/// Terraform's `templatefile` for plain `${name}` interpolations, `$${` standing for `${`.
fn render_tftpl(template: &str, variables: &BTreeMap<&str, String>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("an unclosed interpolation") + start;
        let name = &rest[start + 2..end];
        out.push_str(variables.get(name).unwrap_or_else(|| panic!("the template uses an unknown variable {name}")));
        rest = &rest[end + 1..];
    }
    assert!(!rest.contains("%{"), "the template has directives");
    out.push_str(rest);
    out
}

fn bash_accepts(script: &str) {
    let path = std::env::temp_dir().join(format!("hodei-user-data-{}.sh", uuid::Uuid::now_v7()));
    std::fs::write(&path, script).unwrap();
    let output = Command::new("bash").arg("-n").arg(&path).output().expect("bash");
    let _ = std::fs::remove_file(&path);
    assert!(output.status.success(), "bash -n: {}\n{script}", String::from_utf8_lossy(&output.stderr));
}

fn without_comments(script: &str) -> Vec<&str> {
    script.lines().filter(|line| !line.starts_with("# ")).collect()
}

#[test]
fn the_terraform_template_is_the_providers_script() {
    let template = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(TEMPLATE)).unwrap();
    let settings = AwsSettings {
        region: "eu-central-1".into(),
        endpoint_url: None,
        deployment: "prod".into(),
        api_urls: "https://hodei.example.internal:8443,https://hodei-2.example.internal:8443".into(),
        registration_token_parameter: Some("/hodei/prod/registration-token".into()),
        worker_binary: "/usr/local/bin/hodei-worker".into(),
        drain_timeout_seconds: 600,
    };
    let mut pool: PoolSpec = serde_json::from_value(serde_json::json!({"id": "gpu_a", "provider": "aws-asg"})).unwrap();
    pool.template.slots = Some(8);
    pool.template.cpu_millis = Some(16000);
    pool.template.labels.insert("gpu".into(), "a10g".into());
    pool.template.labels.insert("team".into(), "ml/vision".into());

    let variables = BTreeMap::from([
        ("api_url", settings.api_urls.clone()),
        ("pool", pool.id.clone()),
        ("region", settings.region.clone()),
        ("token_parameter", settings.registration_token_parameter.clone().unwrap()),
        ("worker_args", worker_args(&settings, &pool)),
    ]);
    let from_terraform = render_tftpl(&template, &variables);
    let from_provider = render_user_data(&settings, &pool, InstanceIdSource::Metadata);

    let env = parse_worker_env(&from_terraform);
    assert_eq!(env.len(), 6, "{env:?}");
    assert_eq!(env, parse_worker_env(&from_provider));
    assert_eq!(
        env["HODEI_WORKER_ARGS"],
        "--slots 8 --cpu-millis 16000 --label gpu=a10g --label team=ml/vision --drain-timeout-seconds 600"
    );
    assert_eq!(without_comments(&from_terraform), without_comments(&from_provider));
    bash_accepts(&from_terraform);
    bash_accepts(&from_provider);
    let member = uuid::Uuid::now_v7();
    bash_accepts(&render_user_data(&settings, &pool, InstanceIdSource::Member(member)));
}
