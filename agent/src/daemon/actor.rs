//! The daemon's actor: one task that owns all state, turns link events and dyno events into
//! launches, stops, restarts and reports.

use super::*;

/// What the core task hears from the tasks it spawned (besides the link).
#[derive(Debug)]
pub(super) enum Message {
    Launched {
        id: String,
        run: String,
        stop: mpsc::UnboundedSender<()>,
    },
    LaunchFailed {
        id: String,
        run: String,
        reason: String,
    },
    Dyno {
        id: String,
        run: String,
        event: Event,
    },
    Ended {
        id: String,
        run: String,
    },
    Restart {
        id: String,
        run: String,
    },
    Build(proto::BuildEvent),
}

/// The one task that owns the daemon's state.
pub(super) struct Core {
    pub(super) config: Arc<DaemonConfig>,
    /// Where slugs and build sources come from.
    pub(super) blobs: Arc<dyn BlobStore>,
    /// What runs the dynos.
    pub(super) driver: Arc<dyn DynoDriver>,
    pub(super) state: AgentState,
    /// By assignment id.
    pub(super) dynos: BTreeMap<String, Entry>,
    pub(super) ports: PortAllocator,
    /// The open stream to the scheduler, if any.
    pub(super) link: Option<mpsc::Sender<proto::AgentMessage>>,
    pub(super) inputs: mpsc::UnboundedSender<Message>,
    /// The dynos' lines on their way to the scheduler's log plex.
    pub(super) logs: LogShipper,
    /// Reports waiting for room on the link.
    pub(super) outbox: Outbox,
    pub(super) metrics: Arc<AgentMetrics>,
    /// Destroyed services already reported `DESTROYED` by this daemon (a set repeats them).
    pub(super) destroyed_reported: BTreeSet<String>,
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
            match (self.driver.find(&dir), assignment) {
                (Found::Running(dyno), Some(id)) if !self.dynos.contains_key(&id) => {
                    let config = dyno.config();
                    tracing::info!("re-adopting {} ({id})", config.name);
                    if let Some(port) = config.publish {
                        self.ports.claim(port);
                    }
                    let since = std::fs::read_to_string(dir.root.join(SINCE_FILE))
                        .ok()
                        .and_then(|text| parse_since(&text));
                    // A service's lines belong to no app (their dyno id is the service's).
                    let app = self
                        .assignment(&id)
                        .map(|a| a.app.clone())
                        .unwrap_or_default();
                    let entry = Entry::adopted(&app, config, &id, since, self.schedule());
                    let run = entry.run.clone();
                    self.dynos.insert(id.clone(), entry);
                    tokio::spawn(follow(
                        dyno,
                        id,
                        run,
                        self.config.scheduler.clone(),
                        self.inputs.clone(),
                    ));
                }
                (Found::Running(dyno), _) => {
                    // Not an assignment's: a `manifold-agent run` dyno sharing the state
                    // directory, or a build the previous daemon ran. Its shim ends it.
                    tracing::info!(
                        "leaving {} alone: not an assigned dyno",
                        dyno.dir().root.display()
                    );
                }
                (Found::Busy, _) => {
                    tracing::warn!("leaving {} alone: its shim runs", dir.root.display());
                }
                (Found::Dead, _) => {
                    let root = dir.root.clone();
                    self.driver.remove_dead(dir).await;
                    tracing::info!("removed dead dyno {}", root.display());
                }
            }
        }
    }

    /// Lets re-adopted dynos replay their streams (for `settle` at most), so that `Hello`
    /// carries their real states rather than `starting`.
    pub(super) async fn settle(
        &mut self,
        messages: &mut mpsc::UnboundedReceiver<Message>,
        settle: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + settle;
        while self.dynos.values().any(Entry::starting) {
            tokio::select! {
                Some(message) = messages.recv() => self.input(message),
                () = tokio::time::sleep_until(deadline) => break,
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
                    services: self.service_statuses(),
                };
                self.send(proto::agent_message::Kind::Hello(hello));
            }
            LinkEvent::Disconnected => {
                self.link = None;
                self.outbox.clear();
            }
            LinkEvent::Message(message) => match message.kind {
                Some(proto::scheduler_message::Kind::Assignments(a)) => {
                    if a.cluster != self.state.cluster {
                        // A new database (a fresh node, a replaced or restored database) or
                        // another cluster: its terms are not comparable with the last's.
                        tracing::info!(
                            "assignments of cluster {:?} (term {}); the last applied were of \
                             cluster {:?} (term {}): counting its terms afresh",
                            a.cluster,
                            a.term,
                            self.state.cluster,
                            self.state.term
                        );
                    } else if a.term < self.state.term {
                        tracing::error!(
                            "refused assignments of term {} (generation {}): this agent applied \
                             term {}'s, so they come from a deposed leader",
                            a.term,
                            a.generation,
                            self.state.term,
                        );
                        return;
                    }
                    let old_services = std::mem::take(&mut self.state.services);
                    self.state = AgentState {
                        generation: a.generation,
                        term: a.term,
                        cluster: a.cluster,
                        assignments: a.dynos.into_iter().map(AssignmentRecord::from).collect(),
                        services: a.services.into_iter().map(ServiceRecord::from).collect(),
                        destroyed_services: a.destroyed_services,
                    };
                    if let Err(err) = self
                        .state
                        .save(&AgentState::path(&self.config.host.state_dir))
                    {
                        tracing::error!("cannot save agent.json: {err}");
                    }
                    self.reconcile();
                    self.destroy_services();
                    self.refresh_access(&old_services);
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
        let dyno_id = services::service_id(id).unwrap_or(id);
        self.logs.line(&app, dyno_id, line, Instant::now());
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

    /// A new entry's restart schedule, with the daemon's bounds.
    fn schedule(&self) -> RestartSchedule {
        RestartSchedule::new(self.config.restart)
    }

    fn launcher(&self) -> Launcher {
        Launcher {
            config: self.config.clone(),
            blobs: self.blobs.clone(),
            driver: self.driver.clone(),
            messages: self.inputs.clone(),
        }
    }

    /// Whether entry `id` is in the current set: an assignment, or a service (by its key).
    fn assigned(&self, id: &str) -> bool {
        self.assignment(id).is_some() || self.service(id).is_some()
    }

    pub(super) fn reconcile(&mut self) {
        let services: Vec<String> = self
            .state
            .services
            .iter()
            .map(|s| services::key(&s.id))
            .filter(|key| self.service(key).is_some())
            .collect();
        let plan = plan(
            self.state
                .assignments
                .iter()
                .map(|a| a.id.as_str())
                .chain(services.iter().map(String::as_str)),
            self.dynos.keys().map(String::as_str),
        );
        for id in plan.start {
            let (app, name) = match (self.assignment(&id), self.service(&id)) {
                (Some(a), _) => (a.app.clone(), a.name.clone()),
                (None, Some(s)) => (String::new(), s.name.clone()),
                (None, None) => continue,
            };
            let entry = Entry::new(&app, &name, &id, self.schedule());
            self.dynos.insert(id.clone(), entry);
            self.start(&id);
        }
        for id in plan.stop {
            self.on(&id, Input::Unassigned);
        }
    }

    /// Asks the entry for a run, with the host port a web dyno needs: allocated once, kept
    /// across its restarts.
    fn start(&mut self, id: &str) {
        if self.service(id).is_some() {
            let port = self.service_port(id);
            if let (Some(entry), Ok(port)) = (self.dynos.get_mut(id), &port) {
                entry.port = Some(*port);
            }
            self.on(id, Input::Start(port.map(|_| ())));
            return;
        }
        let web = self
            .assignment(id)
            .is_some_and(|a| manifold_dyno::is_web(a.process_type()));
        let Some(entry) = self.dynos.get_mut(id) else {
            return;
        };
        let ready = match (web, entry.port) {
            (true, None) => match self.ports.allocate() {
                Ok(port) => {
                    entry.port = Some(port);
                    Ok(())
                }
                Err(err) => {
                    tracing::warn!("{id}: {err}");
                    Err(err.to_string())
                }
            },
            _ => Ok(()),
        };
        self.on(id, Input::Start(ready));
    }

    /// Feeds the entry's machine and carries out what it says.
    fn on(&mut self, id: &str, input: Input) {
        let assigned = self.assigned(id);
        let Some(entry) = self.dynos.get_mut(id) else {
            return;
        };
        let now = tokio::time::Instant::now().into_std();
        for effect in entry.on(input, assigned, now) {
            self.execute(id, effect);
        }
    }

    fn execute(&mut self, id: &str, effect: Effect) {
        match effect {
            Effect::Launch => self.launch(id),
            Effect::Stop => {
                if let Some(stop) = self.dynos.get(id).and_then(|e| e.stop.as_ref()) {
                    let _ = stop.send(());
                }
            }
            Effect::Report {
                state,
                exit,
                reason,
            } => self.report(id, proto_state(state), exit, reason),
            Effect::Restarted => {
                if let Some(entry) = self.dynos.get(id) {
                    // The new run's runner starts from `starting`: the change out of
                    // `crashed` is the daemon's to log, in Heroku's words.
                    let line = platform_line(&entry.name, "State changed from crashed to starting");
                    self.log_line(id, &line);
                }
                self.metrics.restarts.fetch_add(1, Ordering::Relaxed);
            }
            Effect::RestartIn(delay) => {
                let Some(entry) = self.dynos.get(id) else {
                    return;
                };
                tracing::info!("restarting {id} in {delay:?}");
                let (inputs, id, run) = (self.inputs.clone(), id.to_string(), entry.run.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = inputs.send(Message::Restart { id, run });
                });
            }
            Effect::Remove => self.remove(id),
        }
    }

    /// Starts a new run of the assignment's dyno.
    fn launch(&mut self, id: &str) {
        let assignment = self.assignment(id).cloned();
        let service = self.service(id).cloned();
        let launcher = self.launcher();
        let Some(entry) = self.dynos.get_mut(id) else {
            return;
        };
        let run = container_id(id);
        entry.run = run.clone();
        entry.stop = None;
        match (assignment, service, entry.port) {
            (Some(assignment), _, port) => {
                tokio::spawn(launch(launcher, assignment, run, port));
            }
            (None, Some(service), Some(port)) => {
                tokio::spawn(services::launch_service(launcher, service, run, port));
            }
            _ => {}
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
        // Not `starting`: it is reported before its run exists (`entry.run` is still the
        // last run's, or none), and a re-adopted dyno is `starting` anyway until replayed.
        if state == proto::DynoState::Up {
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
        if services::service_id(id).is_some() {
            self.report_service(id, &status);
            return;
        }
        // The dyno's lines from before its new state go first, on the same stream (`send`
        // sees to it): a reader of the state (the release phase's outcome, a deploy's
        // output) has them.
        self.send(proto::agent_message::Kind::Dyno(status));
    }

    /// Refreshes the metrics' dynos-by-state.
    fn count_states(&self) {
        let mut counts = BTreeMap::new();
        for e in self.dynos.values() {
            let state = e
                .status
                .dyno_state()
                .map_or("unknown", manifold_dyno::DynoState::as_str);
            *counts.entry(state.to_string()).or_insert(0) += 1;
        }
        *self.metrics.dynos.lock().unwrap_or_else(|e| e.into_inner()) = counts;
    }

    /// Forgets an entry (its `down` was reported by the machine).
    fn remove(&mut self, id: &str) {
        self.logs.forget(id);
        if let Some(entry) = self.dynos.remove(id) {
            if services::service_id(id).is_some() {
                self.service_removed(id, entry.port);
            } else if let Some(port) = entry.port {
                self.ports.release(port);
            }
        }
        self.count_states();
    }

    fn current(&self, id: &str, run: &str) -> bool {
        self.dynos.get(id).is_some_and(|e| e.run == run)
    }

    pub(super) fn input(&mut self, message: Message) {
        match message {
            Message::Launched { id, run, stop } => {
                if !self.current(&id, &run) {
                    return;
                }
                if let Some(entry) = self.dynos.get_mut(&id) {
                    entry.stop = Some(stop);
                }
                self.on(&id, Input::Launched);
            }
            Message::LaunchFailed { id, run, reason } => {
                if self.current(&id, &run) {
                    tracing::warn!("{id}: {reason}");
                    self.on(&id, Input::LaunchFailed(reason));
                }
            }
            Message::Dyno { id, run, event } => {
                if !self.current(&id, &run) {
                    return;
                }
                match event {
                    Event::Line(line) => self.log_line(&id, &line),
                    Event::State {
                        state,
                        status,
                        reason,
                    } => self.on(
                        &id,
                        Input::State {
                            state,
                            exit: status,
                            reason,
                        },
                    ),
                }
            }
            Message::Ended { id, run } => {
                if self.current(&id, &run) {
                    self.on(&id, Input::Ended);
                }
            }
            Message::Restart { id, run } => {
                if self.current(&id, &run) {
                    self.start(&id);
                }
            }
            Message::Build(event) => self.send(proto::agent_message::Kind::Build(event)),
        }
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

#[cfg(test)]
mod tests;
