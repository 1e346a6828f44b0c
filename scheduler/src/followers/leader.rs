//! Finding the leader among the scheduler replicas a follower process knows: one request
//! to the current one, and on failure the move [`Endpoints`] decides (to the leader a
//! follower replica names, or to the next replica, pausing once every one failed).

use manifold_endpoints::{Endpoints, LEADER_HEADER};

use super::causes;

/// Sends `request(url)` to the current scheduler. On a 2xx answer that scheduler is
/// remembered as the leader and the answer returned with its URL; on anything else (no
/// answer, a follower's 503 naming the leader, another error status) the failure is logged
/// as `what`, and `None` comes back after the pause before the next candidate.
pub(super) async fn call(
    endpoints: &mut Endpoints,
    what: &str,
    request: impl FnOnce(&str) -> reqwest::RequestBuilder,
) -> Option<(String, reqwest::Response)> {
    let url = endpoints.current().to_string();
    let (failure, leader) = match request(&url).send().await {
        Ok(response) if response.status().is_success() => {
            endpoints.succeeded();
            return Some((url, response));
        }
        Ok(response) => {
            let leader = named_leader(endpoints, &response);
            let failure = match &leader {
                Some(leader) => format!("{url} is not the leader; {leader} is"),
                None => format!("{url} answered {}", response.status()),
            };
            (failure, leader)
        }
        Err(err) => (format!("cannot reach {url}: {}", causes(err)), None),
    };
    tracing::warn!("{what}: {failure}");
    tokio::time::sleep(endpoints.failed(leader)).await;
    None
}

/// The leader a follower replica names in its 503 (a bad name is logged and ignored).
fn named_leader(endpoints: &Endpoints, response: &reqwest::Response) -> Option<String> {
    if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    endpoints.named_leader(response.headers().get(LEADER_HEADER)?.as_bytes())
}
