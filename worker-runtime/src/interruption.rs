//! Spot interruptions: the cloud announces, about two minutes ahead, that it will reclaim
//! the instance. With `--interruption-url` the agent polls that address (EC2's instance
//! metadata `spot/instance-action`, IMDSv2; a test serves its own): `404` means no notice,
//! `200` is the notice. On a notice the agent drains at once and tells the control plane
//! in its heartbeats, which replaces the capacity and requeues what cannot finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The IMDSv2 session token's address for a metadata URL (`…/latest/meta-data/…`).
pub fn token_url(url: &str) -> Option<String> {
    url.find("/latest/meta-data/").map(|at| format!("{}/latest/api/token", &url[..at]))
}

/// Polls `url` every `every` until a notice arrives; then sets `noticed` and asks for a
/// drain. Errors (no metadata service, a timeout) are not notices.
pub async fn watch(
    client: reqwest::Client,
    url: String,
    every: Duration,
    noticed: Arc<AtomicBool>,
    drain: Arc<Notify>,
) {
    loop {
        if let Some(notice) = poll(&client, &url).await {
            eprintln!("hodei-worker: interruption notice ({}); draining", notice.trim());
            noticed.store(true, Ordering::Relaxed);
            drain.notify_one();
            return;
        }
        tokio::time::sleep(every).await;
    }
}

async fn poll(client: &reqwest::Client, url: &str) -> Option<String> {
    let mut request = client.get(url).timeout(Duration::from_secs(2));
    if let Some(token_url) = token_url(url) {
        let token = client
            .put(token_url)
            .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()
            .filter(|response| response.status().is_success());
        if let Some(token) = token {
            if let Ok(token) = token.text().await {
                request = request.header("X-aws-ec2-metadata-token", token);
            }
        }
    }
    let response = request.send().await.ok()?;
    if response.status() != reqwest::StatusCode::OK {
        return None;
    }
    response.text().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_metadata_service_of_the_url() {
        assert_eq!(
            token_url("http://169.254.169.254/latest/meta-data/spot/instance-action").as_deref(),
            Some("http://169.254.169.254/latest/api/token")
        );
        assert_eq!(token_url("http://127.0.0.1:9/notice"), None);
    }
}
