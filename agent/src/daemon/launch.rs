//! Starting one assigned dyno (its slug fetched, its config made) and following it to its
//! end, as the task the core spawns for it.

use super::*;
use crate::host::netpolicy::{Access, Endpoint};

/// A container id for one run of an assignment: readable, unique per run, short enough for
/// a hostname and an nft comment.
pub(super) fn container_id(assignment: &str) -> String {
    let clean: String = assignment
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("{clean}-{:08x}", rand::random::<u32>())
}

/// What a launch needs from the daemon: its settings and its seams.
pub(super) struct Launcher {
    pub(super) config: Arc<DaemonConfig>,
    pub(super) blobs: Arc<dyn BlobStore>,
    pub(super) driver: Arc<dyn DynoDriver>,
    pub(super) messages: mpsc::UnboundedSender<Message>,
}

/// Fetches the slug and starts the dyno, then follows it (reported as messages).
pub(super) async fn launch(
    launcher: Launcher,
    assignment: AssignmentRecord,
    run: String,
    port: Option<u16>,
) {
    let Launcher {
        config,
        blobs,
        driver,
        messages: inputs,
    } = launcher;
    let id = assignment.id.clone();
    let failed = |reason: String| Message::LaunchFailed {
        id: id.clone(),
        run: run.clone(),
        reason,
    };
    let slug = match blobs
        .fetch(&assignment.slug_sha256, &config.host.slug_archives_dir())
        .await
    {
        Ok(path) => path,
        Err(err) => {
            let _ = inputs.send(failed(format!("slug fetch failed: {}", chain(&err))));
            return;
        }
    };
    let size = match DynoSize::from_str(&assignment.size) {
        Ok(size) => size,
        Err(err) => {
            let _ = inputs.send(failed(err.to_string()));
            return;
        }
    };
    let host = match app_host(&config, &assignment.app).await {
        Ok(host) => host,
        Err(err) => {
            let _ = inputs.send(failed(err));
            return;
        }
    };
    let web = manifold_dyno::is_web(assignment.process_type());
    let egress: Result<Vec<Endpoint>, _> = assignment.egress.iter().map(|e| e.parse()).collect();
    let egress = match egress {
        Ok(egress) => egress,
        Err(err) => {
            let _ = inputs.send(failed(format!("egress: {err}")));
            return;
        }
    };
    let dyno = DynoConfig {
        id: run.clone(),
        name: assignment.name.clone(),
        stack: assignment.stack.clone(),
        slug: Some(SlugSource {
            path: slug,
            sha256: Some(assignment.slug_sha256.clone()),
        }),
        size,
        env: assignment.env.clone(),
        command: assignment.command.clone(),
        // Every dyno has its own network namespace, so all web dynos can use 5000.
        port: web.then_some(manifold_dyno::WEB_PORT),
        publish: port,
        grace: match assignment.stop_timeout_secs {
            0 => GRACE,
            secs => Duration::from_secs(u64::from(secs)),
        },
        boot_timeout: match assignment.boot_timeout_secs {
            0 => config.boot_timeout,
            secs => Duration::from_secs(u64::from(secs)),
        },
        mounts: Vec::new(),
        uid: DYNO_UID,
        gid: DYNO_GID,
        host,
        attach: assignment.attach,
        log_rate: Some(config.log_rate),
        access: Access {
            egress,
            reach: Vec::new(),
            shared: false,
        },
    };
    let launcher = Launcher {
        config,
        blobs,
        driver,
        messages: inputs,
    };
    start_and_follow(launcher, id, run, dyno).await;
}

/// Starts a dyno made for entry `id` (an assignment, or a service's key) and follows it.
pub(super) async fn start_and_follow(
    launcher: Launcher,
    id: String,
    run: String,
    dyno: DynoConfig,
) {
    let Launcher {
        config,
        driver,
        messages: inputs,
        ..
    } = launcher;
    let failed = |reason: String| Message::LaunchFailed {
        id: id.clone(),
        run: run.clone(),
        reason,
    };
    // Written before the shim starts, so every dyno directory a restarted daemon finds says
    // which assignment (or service) it runs.
    let dir = DynoDir::new(&config.host, &run);
    if let Err(err) = std::fs::create_dir_all(&dir.root)
        .and_then(|()| write_atomic(&dir.root.join(ASSIGNMENT_FILE), id.as_bytes()))
    {
        let _ = inputs.send(failed(format!("cannot prepare dyno directory: {err}")));
        return;
    }
    match driver.start(dyno).await {
        Ok(dyno) => follow(dyno, id, run, config.scheduler.clone(), inputs).await,
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir.root);
            let _ = inputs.send(failed(format!("start failed: {}", chain(&err))));
        }
    }
}

/// Follows a started or adopted dyno to its end, forwarding its events as inputs. An
/// attached one-off's terminal is relayed to the scheduler meanwhile.
pub(super) async fn follow(
    dyno: Box<dyn DriverDyno>,
    id: String,
    run: String,
    scheduler: Scheduler,
    inputs: mpsc::UnboundedSender<Message>,
) {
    let relay = dyno
        .config()
        .attach
        .is_some()
        .then(|| tokio::spawn(relay::run(scheduler, id.clone(), dyno.dir().clone())));
    let (stop_tx, stop_rx) = mpsc::unbounded_channel();
    let _ = inputs.send(Message::Launched {
        id: id.clone(),
        run: run.clone(),
        stop: stop_tx,
    });
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let forward = {
        let (inputs, id, run) = (inputs.clone(), id.clone(), run.clone());
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                let input = Message::Dyno {
                    id: id.clone(),
                    run: run.clone(),
                    event,
                };
                if inputs.send(input).is_err() {
                    return;
                }
            }
        })
    };
    // Lost sight of, it is killed by the driver before this returns (see
    // `DriverDyno::follow`).
    if let Err(err) = dyno.follow(events_tx, stop_rx).await {
        tracing::error!("{id}: {}", chain(&err));
    }
    let _ = forward.await;
    if let Some(mut relay) = relay {
        // The relay ends when the shim closes its socket after the last frame; what it still
        // holds then gets a while to reach the scheduler, not forever.
        tokio::spawn(async move {
            if tokio::time::timeout(RELAY_GRACE, &mut relay).await.is_err() {
                relay.abort();
            }
        });
    }
    let _ = inputs.send(Message::Ended { id, run });
}
