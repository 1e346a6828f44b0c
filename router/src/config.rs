//! Router settings; the defaults are Heroku's published limits.

use std::time::Duration;

/// How the router names apps and how long it waits for each party.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Apps are served at `APP.<domain>` (`localhost` makes `myapp.localhost` work locally).
    pub domain: String,
    /// Longest wait for a response head once the request is sent; past it H12 (Heroku: 30 s).
    pub request_timeout: Duration,
    /// Longest silence while streaming a body either way; past it H15 (dyno idle) or H28
    /// (client idle) (Heroku: 55 s). Also bounds the wait for a request's headers from when
    /// a client connection waits for one: slow senders (slowloris), silent and idle
    /// keep-alive connections are closed after it.
    pub idle_timeout: Duration,
    /// Most client connections served at once; past it, new ones wait to be accepted until
    /// one closes (so a flood of connections cannot take every descriptor of the process).
    pub max_connections: usize,
    /// Longest hold of a request for an app that is booting or waking; past it H20
    /// (Heroku: 75 s).
    pub boot_hold: Duration,
    /// Most requests held at once per app; past it H11 "Backlog too deep".
    pub hold_limit: usize,
    /// Longest TCP connect to a dyno before trying another one (Heroku: 5 s).
    pub connect_timeout: Duration,
    /// Dynos tried when connecting fails, then H19 or H21 (Heroku: 10).
    pub connect_attempts: usize,
    /// Idle pooled connections to a dyno older than this are closed rather than reused, so a
    /// dyno's own keep-alive timeout rarely races a reused connection.
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections kept per dyno.
    pub pool_max_idle: usize,
    /// Router threads, each with its own single-threaded runtime (connections are spread
    /// over them); 0 serves on the runtime that calls `serve`. Default: one per CPU.
    pub workers: usize,
    /// On shutdown, how long in-flight requests may take to finish before they are cut.
    pub shutdown_grace: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            domain: "localhost".to_owned(),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(55),
            max_connections: 10_000,
            boot_hold: Duration::from_secs(75),
            hold_limit: 200,
            connect_timeout: Duration::from_secs(5),
            connect_attempts: 10,
            pool_idle_timeout: Duration::from_secs(4),
            pool_max_idle: 256,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}
