//! `hodei migrate` and `hodei admin ...` against a real database: the keys they print work
//! against a real server.

use std::process::Command;

use hodei_e2e::{binary, Client, Server, TestDatabase};
use reqwest::StatusCode;

fn hodei(database_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary("hodei"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HODEI_DATABASE_URL", database_url)
        .env("HODEI_LOG_LEVEL", "warn")
        .output()
        .expect("runs")
}

fn stdout(output: &std::process::Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn admin_commands_print_keys_that_work() {
    let database = TestDatabase::empty().await;
    assert!(stdout(&hodei(&database.url, &["migrate"])).contains("migrations applied"));

    let created = stdout(&hodei(&database.url, &["admin", "create-tenant", "acme", "--weight", "3"]));
    let tenant_key = created.lines().find_map(|l| l.strip_prefix("api key: ")).expect("a key line").to_owned();
    let second_key = stdout(&hodei(&database.url, &["admin", "create-key", "--tenant", "acme"])).trim().to_owned();
    let admin_key = stdout(&hodei(&database.url, &["admin", "create-key", "--admin"])).trim().to_owned();
    assert_ne!(tenant_key, second_key);

    let duplicate = hodei(&database.url, &["admin", "create-tenant", "acme"]);
    assert_eq!(duplicate.status.code(), Some(1));
    let unknown = hodei(&database.url, &["admin", "create-key", "--tenant", "nobody"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no tenant named \"nobody\""), "{unknown:?}");

    let server = Server::start(&database.url).await;
    for key in [&tenant_key, &second_key] {
        let client = Client::new(&server.url, Some(key));
        assert_eq!(client.submit(&["true"]).await["tenant"], "acme");
    }
    let admin = Client::new(&server.url, Some(&admin_key));
    let tenant = admin.get("/api/v1/tenants/acme").await;
    assert_eq!((tenant.status, tenant.body["weight"].as_i64()), (StatusCode::OK, Some(3)));
}
