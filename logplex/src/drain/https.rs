//! HTTPS drains: batches of syslog frames POSTed as Heroku's Logplex does.
//!
//! Each request carries `Content-Type: application/logplex-1`, `Logplex-Msg-Count`,
//! `Logplex-Frame-Id` and `Logplex-Drain-Token`; the body is the octet-counted frames of
//! [`super::syslog::frame`] back to back. A batch closes at `batch_max` lines or
//! `batch_linger` after its first line. A failed batch (connection error or non-2xx) is
//! retried with backoff under the same frame id, so a receiver can discard a duplicate.
//! User and password in the URL become basic authentication, as Heroku allows.

use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use url::Url;

use super::{guard, syslog, Backoff, DrainTask};
use crate::metrics::Transport;

/// Why one POST failed (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error(transparent)]
    Refused(#[from] guard::Refused),
    #[error("drain answered {0}")]
    Status(reqwest::StatusCode),
}

/// Basic-auth credentials taken out of the URL.
struct Credentials {
    user: String,
    password: Option<String>,
}

/// Splits `user:password@` off the URL so it is sent as an `Authorization` header only.
fn split_credentials(mut url: Url) -> (Url, Option<Credentials>) {
    if url.username().is_empty() && url.password().is_none() {
        return (url, None);
    }
    let credentials = Credentials {
        user: url.username().to_owned(),
        password: url.password().map(str::to_owned),
    };
    // Only fails for URLs that cannot have credentials, which these just had.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    (url, Some(credentials))
}

fn client(task: &DrainTask) -> Result<reqwest::Client, reqwest::Error> {
    let destinations = task.settings.destinations.clone();
    // A redirect to an address skips the resolver: check it here (names go through it).
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            attempt.error("too many redirects")
        } else if let Err(refused) = guard::check_url(&destinations, attempt.url()) {
            attempt.error(refused)
        } else {
            attempt.follow()
        }
    });
    let builder = reqwest::Client::builder()
        .timeout(task.settings.timeout)
        .connect_timeout(task.settings.timeout)
        .dns_resolver(std::sync::Arc::new(guard::GuardedResolver(
            task.settings.destinations.clone(),
        )))
        .redirect(redirects);
    match &task.tls {
        Ok(config) => builder.use_preconfigured_tls((**config).clone()),
        Err(error) => {
            tracing::error!(app = %task.app, drain = %task.drain.id, %error, "tls is not set up; only http:// drains can work");
            builder
        }
    }
    .build()
}

async fn post(
    client: &reqwest::Client,
    url: &Url,
    credentials: Option<&Credentials>,
    task: &DrainTask,
    frame_id: &str,
    count: usize,
    body: &[u8],
) -> Result<(), PostError> {
    guard::check_url(&task.settings.destinations, url)?;
    let mut request = client
        .post(url.clone())
        .header(CONTENT_TYPE, "application/logplex-1")
        .header(
            USER_AGENT,
            concat!("manifold-logplex/", env!("CARGO_PKG_VERSION")),
        )
        .header("Logplex-Msg-Count", count)
        .header("Logplex-Frame-Id", frame_id)
        .header("Logplex-Drain-Token", &task.drain.token)
        .body(body.to_vec());
    if let Some(c) = credentials {
        request = request.basic_auth(&c.user, c.password.as_deref());
    }
    let response = request.send().await.map_err(|error| {
        // The resolver's or the redirect policy's refusal, if that is what failed.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if let Some(refused) = e.downcast_ref::<guard::Refused>() {
                return PostError::Refused(refused.clone());
            }
            source = e.source();
        }
        PostError::Request(error)
    })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(PostError::Status(status))
    }
}

/// The drain task: collect a batch, POST it until it is accepted, repeat.
pub(crate) async fn run(task: DrainTask, url: Url) {
    let mut backoff = Backoff::new(task.settings.backoff_min, task.settings.backoff_max);
    let client = loop {
        match client(&task) {
            Ok(client) => break client,
            Err(error) => {
                task.metrics.failed(Transport::Https);
                tracing::error!(app = %task.app, drain = %task.drain.id, %error, "cannot build the http client");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    let (url, credentials) = split_credentials(url);
    let mut told = false;
    loop {
        let batch = task
            .queue
            .next_batch_lingering(task.settings.batch_max, task.settings.batch_linger)
            .await;
        let body = syslog::frames(&batch, &task.drain.token);
        let frame_id = uuid::Uuid::new_v4().to_string();
        loop {
            match post(
                &client,
                &url,
                credentials.as_ref(),
                &task,
                &frame_id,
                batch.len(),
                &body,
            )
            .await
            {
                Ok(()) => {
                    told = false;
                    break;
                }
                Err(PostError::Refused(reason)) => {
                    task.refused(Transport::Https, &reason, &mut told);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => {
                    task.metrics.failed(Transport::Https);
                    tracing::debug!(app = %task.app, drain = %task.drain.id, %error, "https drain post failed");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
        backoff.reset();
        task.delivered(Transport::Https, batch.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url() {
        let url = Url::parse("https://user:secret@logs.example.com/x").expect("url");
        let (url, creds) = split_credentials(url);
        assert_eq!(url.as_str(), "https://logs.example.com/x");
        let creds = creds.expect("credentials");
        assert_eq!(creds.user, "user");
        assert_eq!(creds.password.as_deref(), Some("secret"));
        let (_, none) = split_credentials(Url::parse("https://h/").expect("url"));
        assert!(none.is_none());
    }
}
