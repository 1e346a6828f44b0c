//! The daemon's actor: one task that owns all state, turns link events and dyno events into
//! launches, stops, restarts and reports.

use super::*;

/// The one task that owns the daemon's state.
pub(super) struct Core {
    pub(super) config: Arc<DaemonConfig>,
    pub(super) blobs: Blobs,
    pub(super) state: AgentState,
    /// By assignment id.
    pub(super) dynos: BTreeMap<String, Entry>,
    pub(super) ports: PortAllocator,
    /// The open stream to the scheduler, if any.
    pub(super) link: Option<mpsc::Sender<proto::AgentMessage>>,
    pub(super) inputs: mpsc::UnboundedSender<Input>,
    /// The dynos' lines on their way to the scheduler's log plex.
    pub(super) logs: LogShipper,
    /// Reports waiting for room on the link.
    pub(super) outbox: Outbox,
    pub(super) metrics: Arc<AgentMetrics>,
}

impl Core {
    /// Picks up the dynos a previous daemon left: follows those whose shim runs, cleans up
    /// after those whose shim is gone.
    pub(super) async fn adopt_all(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.config.host.dynos_dir()) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let dir = DynoDir { root: entry.path() };
            let assignment = std::fs::read_to_string(dir.root.join(ASSIGNMENT_FILE))
                .ok()
                .map(|s| s.trim().to_string());
            // Alive includes a directory so new that its shim has no pid yet (someone else's
            // `manifold-agent run` starting): never cleaned up from under it.
            let alive = runner::shim_alive(&dir);
            let dyno = if alive && dir.shim_pid().exists() {
                match Dyno::adopt(dir.clone()) {
                    Ok(dyno) => Some(dyno),
                    Err(err) => {
                        tracing::warn!("{}", chain(&err));
                        None
                    }
                }
            } else {
                None
            };
            match (dyno, assignment) {
                (Some(dyno), Some(id)) if !self.dynos.contains_key(&id) => {
                    tracing::info!("re-adopting {} ({id})", dyno.config.name);
                    if let Some(port) = dyno.config.publish {
                        self.ports.claim(port);
                    }
                    let run = dyno.config.id.clone();
                    let since = std::fs::read_to_string(dir.root.join(SINCE_FILE))
                        .ok()
                        .and_then(|text| parse_since(&text));
                    let app = self
                        .assignment(&id)
                        .map(|a| a.app.clone())
                        .unwrap_or_default();
                    self.dynos.insert(
                        id.clone(),
                        Entry {
                            app,
                            name: dyno.config.name.clone(),
                            run: run.clone(),
                            port: dyno.config.publish,
                            phase: Phase::Launching,
                            status: proto::DynoStatus {
                                id: id.clone(),
                                state: proto::DynoState::Starting.into(),
                                changed_at_ms: now_ms(),
                                exit_status: None,
                                reason: String::new(),
                                port: dyno.config.publish.map(u32::from).unwrap_or(0),
                            },
                            restarts: RestartSchedule::new(self.config.restart),
                            since,
                        },
                    );
                    tokio::spawn(follow(
                        dyno,
                        id,
                        run,
                        self.config.scheduler.clone(),
                        self.inputs.clone(),
                    ));
                }
                (Some(dyno), _) => {
                    // Not an assignment's: a `manifold-agent run` dyno sharing the state
                    // directory, or a build the previous daemon ran. Its shim ends it.
                    tracing::info!(
                        "leaving {} alone: not an assigned dyno",
                        dyno.dir.root.display()
                    );
                }
                (None, _) if alive => {
                    tracing::warn!("leaving {} alone: its shim runs", dir.root.display());
                }
                (None, _) => {
                    let root = dir.root.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || match crate::shim::remove_dead(&dir) {
                            Ok(errors) => {
                                for err in errors {
                                    tracing::warn!("cleanup of {}: {err}", dir.root.display());
                                }
                            }
                            Err(err) => {
                                tracing::warn!("cannot remove {}: {err}", dir.root.display())
                            }
                        })
                        .await;
                    tracing::info!("removed dead dyno {}", root.display());
                }
            }
        }
    }

    pub(super) fn link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected(tx) => {
                self.link = Some(tx);
                self.outbox.clear();
                let hello = proto::Hello {
                    host_id: self.config.host_id.clone(),
                    address: self.config.address.clone(),
                    capacity: Some(proto::Capacity {
                        memory_bytes: self.config.memory_bytes,
                        dyno_slots: self.config.slots,
                    }),
                    stacks: stacks(&self.config.host.stacks_dir()),
                    dynos: self.dynos.values().map(|e| e.status.clone()).collect(),
                    generation: self.state.generation,
                };
                self.send(proto::agent_message::Kind::Hello(hello));
            }
            LinkEvent::Disconnected => {
                self.link = None;
                self.outbox.clear();
            }
            LinkEvent::Message(message) => match message.kind {
                Some(proto::scheduler_message::Kind::Assignments(a)) => {
                    self.state = AgentState {
                        generation: a.generation,
                        assignments: a.dynos.into_iter().map(AssignmentRecord::from).collect(),
                    };
                    if let Err(err) = self
                        .state
                        .save(&AgentState::path(&self.config.host.state_dir))
                    {
                        tracing::error!("cannot save agent.json: {err}");
                    }
                    self.reconcile();
                }
                Some(proto::scheduler_message::Kind::Build(request)) => {
                    tokio::spawn(run_build(
                        self.config.clone(),
                        self.blobs.clone(),
                        request,
                        self.inputs.clone(),
                    ));
                }
                None => {}
            },
        }
    }

    /// Sends what waits for the scheduler, if linked: log lines, and the reports the link's
    /// buffer could not take before (see [`outbox`]); what it cannot take now waits.
    pub(super) fn ship_logs(&mut self) {
        let m = &self.metrics;
        m.dropped_rate
            .store(self.logs.dropped_rate, Ordering::Relaxed);
        m.dropped_queue
            .store(self.logs.dropped_queue, Ordering::Relaxed);
        m.dropped_build_output
            .store(self.outbox.dropped_output, Ordering::Relaxed);
        m.connected.store(self.link.is_some(), Ordering::Relaxed);
        let Some(link) = &self.link else {
            return;
        };
        let (flushed, shipped) = outbox::flush(&mut self.outbox, &mut self.logs, link);
        self.metrics
            .lines_shipped
            .fetch_add(shipped, Ordering::Relaxed);
        if flushed == outbox::Flushed::Closed {
            self.link = None;
            self.outbox.clear();
        }
    }

    /// Takes a line of a dyno for the log plex (and the agent's own log).
    fn log_line(&mut self, id: &str, line: &LogLine) {
        match line.source {
            Source::App => tracing::debug!("{line}"),
            Source::Heroku => tracing::info!("{line}"),
        }
        // Every line comes from an entry: events of dynos without one are dropped earlier.
        let app = self
            .dynos
            .get(id)
            .map(|e| e.app.clone())
            .unwrap_or_default();
        self.logs.line(&app, id, line, Instant::now());
    }

    /// Sends a message to the scheduler if linked, after the log lines queued before it. A
    /// full link buffer never loses it: it waits in the outbox (a dyno's reports coalesced)
    /// and goes with the next flush. Unlinked, it is not needed: `Hello` carries every
    /// dyno's state, and the scheduler fails the builds of a host that went away.
    pub(super) fn send(&mut self, kind: proto::agent_message::Kind) {
        if self.link.is_none() {
            return;
        }
        self.outbox.push(kind, self.logs.queued_total());
        self.ship_logs();
    }

    fn assignment(&self, id: &str) -> Option<&AssignmentRecord> {
        self.state.assignments.iter().find(|a| a.id == id)
    }

    pub(super) fn reconcile(&mut self) {
        let plan = plan(
            self.state.assignments.iter().map(|a| a.id.as_str()),
            self.dynos.keys().map(String::as_str),
        );
        for id in plan.start {
            self.launch(&id);
        }
        for id in plan.stop {
            let Some(entry) = self.dynos.get_mut(&id) else {
                continue;
            };
            match std::mem::replace(&mut entry.phase, Phase::Stopping) {
                Phase::Running { stop } => {
                    let _ = stop.send(());
                }
                Phase::Backoff | Phase::Done => self.remove(&id),
                // Stopped as soon as it is launched (see `Input::Launched`).
                Phase::Launching => entry.phase = Phase::Launching,
                Phase::Stopping => {}
            }
        }
    }

    /// Starts (or restarts) the assignment's dyno.
    fn launch(&mut self, id: &str) {
        let Some(assignment) = self.assignment(id).cloned() else {
            return;
        };
        let web = assignment.process_type() == "web";
        let existing_port = self.dynos.get(id).and_then(|e| e.port);
        let port = match (web, existing_port) {
            (false, _) => Ok(None),
            (true, Some(p)) => Ok(Some(p)),
            (true, None) => self.ports.allocate().map(Some),
        };
        let run = container_id(id);
        let entry = self.dynos.entry(id.to_string()).or_insert_with(|| Entry {
            app: assignment.app.clone(),
            name: assignment.name.clone(),
            run: String::new(),
            port: None,
            phase: Phase::Launching,
            status: proto::DynoStatus {
                id: id.to_string(),
                ..Default::default()
            },
            restarts: RestartSchedule::new(self.config.restart),
            since: None,
        });
        entry.run = run.clone();
        entry.phase = Phase::Launching;
        match port {
            Ok(port) => {
                entry.port = port;
                self.report(id, proto::DynoState::Starting, None, String::new());
                tokio::spawn(launch(
                    self.config.clone(),
                    self.blobs.clone(),
                    assignment,
                    run,
                    port,
                    self.inputs.clone(),
                ));
            }
            Err(err) => {
                let _ = self.inputs.send(Input::LaunchFailed {
                    id: id.to_string(),
                    run,
                    reason: err.to_string(),
                });
            }
        }
    }

    /// Records and reports an entry's new state.
    fn report(&mut self, id: &str, state: proto::DynoState, exit: Option<i32>, reason: String) {
        let Some(entry) = self.dynos.get_mut(id) else {
            return;
        };
        let changed_at_ms = match entry.since.take() {
            // Re-adopted in the state it had: it has been in it since then.
            Some((was, since)) if was == state => since,
            _ => now_ms(),
        };
        // Beside the dyno for a later daemon, while it runs (an ended dyno's directory is
        // being removed: nothing of it is re-adopted); a directory already gone takes nothing.
        if matches!(state, proto::DynoState::Starting | proto::DynoState::Up) {
            let root = DynoDir::new(&self.config.host, &entry.run).root;
            let _ = std::fs::write(root.join(SINCE_FILE), since_text(state, changed_at_ms));
        }
        entry.status = proto::DynoStatus {
            id: id.to_string(),
            state: state.into(),
            changed_at_ms,
            exit_status: exit,
            reason,
            port: entry.port.map(u32::from).unwrap_or(0),
        };
        let status = entry.status.clone();
        tracing::info!("{} ({id}) is {}", entry.name, state.as_str_name());
        self.count_states();
        // The dyno's lines from before its new state go first, on the same stream (`send`
        // sees to it): a reader of the state (the release phase's outcome, a deploy's
        // output) has them.
        self.send(proto::agent_message::Kind::Dyno(status));
    }

    /// Refreshes the metrics' dynos-by-state.
    fn count_states(&self) {
        let mut counts = BTreeMap::new();
        for e in self.dynos.values() {
            let state = proto_state_name(e.status.state());
            *counts.entry(state.to_string()).or_insert(0) += 1;
        }
        *self.metrics.dynos.lock().unwrap_or_else(|e| e.into_inner()) = counts;
    }

    /// Forgets an entry that ended and was not assigned any more: reports it `down` (once).
    fn remove(&mut self, id: &str) {
        if self
            .dynos
            .get(id)
            .is_some_and(|e| e.status.state() != proto::DynoState::Down)
        {
            let exit = self.dynos.get(id).and_then(|e| e.status.exit_status);
            self.report(id, proto::DynoState::Down, exit, String::new());
        }
        self.logs.forget(id);
        if let Some(entry) = self.dynos.remove(id) {
            if let Some(port) = entry.port {
                self.ports.release(port);
            }
        }
        self.count_states();
    }

    fn current(&self, id: &str, run: &str) -> bool {
        self.dynos.get(id).is_some_and(|e| e.run == run)
    }

    pub(super) fn input(&mut self, input: Input) {
        match input {
            Input::Launched { id, run, stop } => {
                if !self.current(&id, &run) {
                    return;
                }
                let assigned = self.assignment(&id).is_some();
                if let Some(entry) = self.dynos.get_mut(&id) {
                    entry.phase = if assigned {
                        Phase::Running { stop }
                    } else {
                        let _ = stop.send(());
                        Phase::Stopping
                    };
                }
            }
            Input::LaunchFailed { id, run, reason } => {
                if !self.current(&id, &run) {
                    return;
                }
                tracing::warn!("{id}: {reason}");
                self.report(&id, proto::DynoState::Crashed, None, reason);
                self.ended(&id);
            }
            Input::Dyno { id, run, event } => {
                if !self.current(&id, &run) {
                    return;
                }
                match event {
                    Event::Line(line) => self.log_line(&id, &line),
                    Event::State {
                        state,
                        status,
                        reason,
                    } => {
                        if state == State::Up {
                            if let Some(entry) = self.dynos.get_mut(&id) {
                                entry.restarts.up(Instant::now());
                            }
                        }
                        self.report(&id, proto_state(state), status, reason.unwrap_or_default());
                    }
                }
            }
            Input::Ended { id, run } => {
                if self.current(&id, &run) {
                    self.ended(&id);
                }
            }
            Input::Restart { id, run } => {
                let waiting = self
                    .dynos
                    .get(&id)
                    .is_some_and(|e| e.run == run && matches!(e.phase, Phase::Backoff));
                if waiting && self.assignment(&id).is_some() {
                    if let Some(entry) = self.dynos.get(&id) {
                        // The new run's runner starts from `starting`: the change out of
                        // `crashed` is the daemon's to log, in Heroku's words.
                        let line =
                            platform_line(&entry.name, "State changed from crashed to starting");
                        self.log_line(&id, &line);
                    }
                    self.metrics.restarts.fetch_add(1, Ordering::Relaxed);
                    self.launch(&id);
                }
            }
            Input::Build(event) => self.send(proto::agent_message::Kind::Build(event)),
        }
    }

    /// A run of the entry ended (or never started): remove it, keep it, or schedule a restart.
    fn ended(&mut self, id: &str) {
        let Some(assignment) = self.assignment(id).cloned() else {
            self.remove(id);
            return;
        };
        let Some(entry) = self.dynos.get_mut(id) else {
            return;
        };
        if assignment.one_off() {
            entry.phase = Phase::Done;
            return;
        }
        entry.phase = Phase::Backoff;
        let delay = entry.restarts.crashed(Instant::now());
        let run = entry.run.clone();
        if entry.status.state() != proto::DynoState::Crashed {
            let exit = entry.status.exit_status;
            self.report(id, proto::DynoState::Crashed, exit, String::new());
        }
        tracing::info!("restarting {id} in {delay:?}");
        let inputs = self.inputs.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = inputs.send(Input::Restart { id, run });
        });
    }
}

/// A platform line the daemon itself writes (the runners write the others).
fn platform_line(dyno: &str, text: &str) -> LogLine {
    LogLine {
        ts: timestamp(),
        source: Source::Heroku,
        dyno: dyno.to_string(),
        stream: None,
        text: text.to_string(),
    }
}

/// The stacks ready on this host: directories with a `.manifold-stack` marker.
fn stacks(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join(".manifold-stack").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Removes slugs no dyno has used for `retention`, then gives back the id ranges of apps
/// gone from the host, once an hour ([`crate::host::gc`], [`crate::host::ids`]).
pub(super) async fn collect_slugs(host: HostConfig, retention: Duration, ids: Option<IdRanges>) {
    let mut every = tokio::time::interval(GC_INTERVAL);
    loop {
        every.tick().await;
        let host = host.clone();
        let ids = ids.clone();
        let collect = move || -> anyhow::Result<()> {
            crate::host::gc::collect_slugs(&host, retention)?;
            if let Some(ids) = ids {
                ids.release_unused(&host, crate::host::ids::RELEASE_AFTER)?;
            }
            Ok(())
        };
        match tokio::task::spawn_blocking(collect).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!("slug collection failed: {err:#}"),
            Err(err) => tracing::warn!("slug collection panicked: {err}"),
        }
    }
}

/// The host settings a dyno or build of `app` runs with: the app's own id range.
pub(super) async fn app_host(config: &DaemonConfig, app: &str) -> Result<HostConfig, String> {
    let mut host = config.host.clone();
    if let Some(ids) = config.ids.clone() {
        let app = app.to_string();
        let range = tokio::task::spawn_blocking(move || ids.for_app(&app))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        host.userns = Some(range);
    }
    Ok(host)
}

/// How often the daemon collects unused slugs.
const GC_INTERVAL: Duration = Duration::from_secs(3600);
