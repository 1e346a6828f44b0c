//! A simulation run: the scheduler and hosts brought up, the apps given a release, then each
//! scenario in turn, measured from the users' action until every wanted dyno is reported
//! `up` by the hosts *and* counted `up` by the scheduler (`/metrics`), or the deadline.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::agent::{Link, SimHost};
use crate::api::Api;
use crate::config::{Config, Scenario};
use crate::fleet::{Census, Fleet, Want};
use crate::measure::{self, Sampler};
use crate::prom;
use crate::report::{Outcome, Setup};
use crate::scheduler::Scheduler;
use crate::slug::Slug;
use crate::wire::Wire;

/// Requests the users' side has in flight at once.
const CONCURRENCY: usize = 16;
/// Apps promoted per request.
const PROMOTION_BATCH: usize = 500;
const SEED: &str = "sim-seed";
const PROBE: &str = "sim-probe";
const PIPELINE: &str = "sim";
const HISTOGRAM: &str = "manifold_reconcile_seconds";

/// A running simulation.
#[derive(Debug)]
pub struct Sim {
    pub config: Config,
    pub scheduler: Scheduler,
    pub api: Api,
    pub fleet: Fleet,
    pub apps: Vec<String>,
    pub want: Arc<Mutex<HashMap<String, Want>>>,
    wire: Arc<Wire>,
    sampler: Arc<Sampler>,
    sampling: tokio::task::JoinHandle<()>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.sampling.abort();
    }
}

async fn each<F, Fut>(items: &[String], f: F) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    stream::iter(items.iter().cloned().map(f))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

impl Sim {
    /// Starts the scheduler and the hosts, and gives every app the seed app's release.
    pub async fn start(config: Config) -> anyhow::Result<(Sim, Setup)> {
        let f = &config.flags;
        let mut scheduler =
            Scheduler::prepare(&config.scheduler_bin, f.heartbeat_deadline, f.hosts)?;
        let ca_pem = scheduler.ca_pem()?;
        let api = Api::new(scheduler.url(), scheduler.api_token.clone(), &ca_pem)?;
        scheduler.start(&api.client).await?;
        let sampler = Arc::new(Sampler::default());
        *sampler.pid.lock().unwrap_or_else(|e| e.into_inner()) = scheduler.pid();
        let sampling = sampler.clone().run();

        let t = Instant::now();
        let ca = scheduler.ca()?;
        let mut hosts = Vec::with_capacity(f.hosts);
        for i in 0..f.hosts {
            let id = format!("sim-{i:05}");
            let signed = ca.sign(&id, std::slice::from_ref(&id), &[], 30)?;
            let memory = u64::from(config.slots) * 1024 * 1024 * 1024;
            hosts.push(Arc::new(SimHost::new(
                id,
                config.slots,
                memory,
                signed.cert_pem,
                signed.key_pem,
            )));
        }
        let certs_secs = t.elapsed().as_secs_f64();
        let wire = Arc::new(Wire::default());
        let link = Arc::new(Link {
            url: scheduler.url(),
            agent_token: scheduler.agent_token.clone(),
            ca_pem,
            wire: wire.clone(),
            heartbeat: f.heartbeat,
            log_rate: f.log_rate,
            stack: "bookworm".to_string(),
            slug: Slug::new()?,
        });
        let mut fleet = Fleet::new(hosts, link.clone());
        let t = Instant::now();
        for i in 0..f.hosts {
            fleet.start(i);
        }
        let sim = Sim {
            apps: (0..f.apps).map(|i| format!("sim-app-{i:05}")).collect(),
            want: Arc::new(Mutex::new(HashMap::new())),
            config,
            scheduler,
            api,
            fleet,
            wire,
            sampler,
            sampling,
        };
        sim.wait_linked(sim.config.flags.deadline).await?;
        let link_secs = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let api = &sim.api;
        api.create_app(SEED, &link.stack).await?;
        api.build(SEED, link.slug.bytes.clone(), Duration::from_secs(120))
            .await?;
        api.create_pipeline(PIPELINE, SEED, "staging").await?;
        let mut targets = sim.apps.clone();
        targets.push(PROBE.to_string());
        let stack = link.stack.as_str();
        each(&targets, |app| async move {
            api.create_app(&app, stack).await?;
            api.couple(&app, PIPELINE, "production").await
        })
        .await?;
        for batch in targets.chunks(PROMOTION_BATCH) {
            api.promote(PIPELINE, SEED, batch).await?;
        }
        api.scale(PROBE, 1).await?;
        let apps_secs = t.elapsed().as_secs_f64();
        let setup = Setup {
            hosts: sim.config.flags.hosts,
            apps: sim.config.flags.apps,
            slots: sim.config.slots,
            certs_secs,
            link_secs,
            apps_secs,
        };
        Ok((sim, setup))
    }

    /// Waits until every running host has an open stream.
    async fn wait_linked(&self, within: Duration) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            let c = self.fleet.census(&HashMap::new());
            if c.linked == c.running_hosts {
                return Ok(());
            }
            if t.elapsed() > within {
                anyhow::bail!(
                    "{} of {} hosts linked after {within:?}; the scheduler's log:\n{}",
                    c.linked,
                    c.running_hosts,
                    self.scheduler.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn census(&self) -> Census {
        self.fleet
            .census(&self.want.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Dynos wanted in all.
    pub fn target(&self) -> u64 {
        let want = self.want.lock().unwrap_or_else(|e| e.into_inner());
        want.values().map(|w| u64::from(w.quantity)).sum()
    }

    /// App `i`'s share of the dynos.
    fn share(&self, i: usize) -> u32 {
        let f = &self.config.flags;
        let base = f.dynos / f.apps as u64;
        let extra = u64::from((i as u64) < f.dynos % f.apps as u64);
        u32::try_from(base + extra).unwrap_or(u32::MAX)
    }

    /// The probe app's dynos on the hosts.
    fn probe_dynos(&self) -> u64 {
        let probe = HashMap::from([(
            PROBE.to_string(),
            Want {
                quantity: u32::MAX,
                release: 0,
            },
        )]);
        self.fleet.census(&probe).up
    }

    /// Runs one scenario.
    pub async fn run(&mut self, scenario: Scenario) -> anyhow::Result<Outcome> {
        let before_metrics = self.api.metrics().await?;
        let before_hist = prom::Histogram::parse(&before_metrics, HISTOGRAM);
        let before_wire = self.wire.totals();
        self.sampler.reset();
        let stop = Arc::new(AtomicBool::new(false));
        let probe = tokio::spawn(measure::probe(
            self.api.clone(),
            PROBE.to_string(),
            stop.clone(),
        ));
        let started = Instant::now();
        let mut moved = None;
        let mut ids_before = None;
        match scenario {
            Scenario::Scale => {
                let shares: Vec<u32> = (0..self.apps.len()).map(|i| self.share(i)).collect();
                {
                    let mut want = self.want.lock().unwrap_or_else(|e| e.into_inner());
                    for (app, q) in self.apps.iter().zip(&shares) {
                        want.insert(
                            app.clone(),
                            Want {
                                quantity: *q,
                                release: 0,
                            },
                        );
                    }
                }
                let api = &self.api;
                let pairs: Vec<String> = self
                    .apps
                    .iter()
                    .zip(&shares)
                    .map(|(a, q)| format!("{a}={q}"))
                    .collect();
                let act = each(&pairs, |pair| async move {
                    let (app, q) = pair.split_once('=').context("pair")?;
                    api.scale(app, q.parse()?).await
                });
                let (acted, reached) = tokio::join!(act, self.wait(started));
                acted?;
                return self
                    .finish(
                        scenario,
                        started,
                        reached,
                        before_hist,
                        before_wire,
                        stop,
                        probe,
                        None,
                        None,
                    )
                    .await;
            }
            Scenario::Lose => {
                let n = self.fleet.hosts.len() * self.config.flags.lose_percent as usize / 100;
                let first = self.fleet.hosts.len() - n;
                let mut on_lost = 0;
                for i in first..self.fleet.hosts.len() {
                    on_lost += self.fleet.hosts[i]
                        .state
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .dynos
                        .len() as u64;
                    self.fleet.stop(i);
                }
                moved = Some(on_lost);
            }
            Scenario::Restart => {
                ids_before = Some(self.fleet.dyno_ids());
                self.scheduler.kill();
                self.scheduler.start(&self.api.client).await?;
                *self.sampler.pid.lock().unwrap_or_else(|e| e.into_inner()) = self.scheduler.pid();
            }
            Scenario::Deploy => {
                {
                    let mut want = self.want.lock().unwrap_or_else(|e| e.into_inner());
                    for w in want.values_mut() {
                        // Nothing counts until the app's new release is known.
                        w.release = u32::MAX;
                    }
                }
                let api = &self.api;
                let want = &self.want;
                let act = each(&self.apps, |app| async move {
                    let release = api.set_config(&app, "SIM_DEPLOY", "1").await?;
                    if let Some(w) = want.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&app) {
                        w.release = release;
                    }
                    Ok(())
                });
                let (acted, reached) = tokio::join!(act, self.wait(started));
                acted?;
                return self
                    .finish(
                        scenario,
                        started,
                        reached,
                        before_hist,
                        before_wire,
                        stop,
                        probe,
                        None,
                        None,
                    )
                    .await;
            }
        }
        let reached = self.wait(started).await;
        self.finish(
            scenario,
            started,
            reached,
            before_hist,
            before_wire,
            stop,
            probe,
            moved,
            ids_before,
        )
        .await
    }

    /// Waits until the hosts run every wanted dyno (and nothing else of the apps), every
    /// running host is linked, and the scheduler counts them `up`; returns the time it took
    /// or `None` at the deadline.
    async fn wait(&self, started: Instant) -> Option<Duration> {
        let deadline = self.config.flags.deadline;
        loop {
            let c = self.census();
            let target = self.target();
            if c.up == target && c.extra == 0 && c.linked == c.running_hosts {
                if let Ok(text) = self.api.metrics().await {
                    let up = prom::sample(&text, "manifold_dynos{state=\"up\"}") as u64;
                    if up >= target + self.probe_dynos() {
                        return Some(started.elapsed());
                    }
                }
            }
            if started.elapsed() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &mut self,
        scenario: Scenario,
        started: Instant,
        reached: Option<Duration>,
        before_hist: Option<prom::Histogram>,
        before_wire: (u64, u64),
        stop: Arc<AtomicBool>,
        probe: tokio::task::JoinHandle<measure::ProbeTimes>,
        moved: Option<u64>,
        ids_before: Option<HashSet<String>>,
    ) -> anyhow::Result<Outcome> {
        let secs = reached.unwrap_or_else(|| started.elapsed()).as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let times = probe.await.context("the API probe panicked")?;
        if let Some(err) = &times.first_error {
            eprintln!(
                "{scenario:?}: {} ps/ps:scale requests failed, the first: {err}",
                times.errors
            );
        }
        let (rss, cpu) = self.sampler.figures();
        let wire = self.wire.totals();
        let after = self.api.metrics().await?;
        let reconcile = match (prom::Histogram::parse(&after, HISTOGRAM), before_hist) {
            (Some(a), Some(b)) => Some(a.since(&b)),
            _ => None,
        };
        let census = self.census();
        let target = self.target();
        let restarted = ids_before.map(|before| {
            let now = self.fleet.dyno_ids();
            before.difference(&now).count() as u64
        });
        let changed = moved.unwrap_or(target);
        let outcome = Outcome {
            scenario,
            hosts: self.fleet.running().count(),
            dynos: target,
            reached: census.up,
            settled: reached.is_some(),
            seconds: secs,
            dynos_per_s: reached.map(|_| changed as f64 / secs.max(1e-9)),
            reconcile_passes: reconcile.as_ref().map_or(0, |h| h.count),
            reconcile_p50_ms: reconcile
                .as_ref()
                .and_then(|h| h.quantile(0.5))
                .map(|s| s * 1000.0),
            reconcile_p99_ms: reconcile
                .as_ref()
                .and_then(|h| h.quantile(0.99))
                .map(|s| s * 1000.0),
            ps_p99_ms: measure::quantile_ms(&times.ps, 0.99),
            ps_requests: times.ps.len(),
            scale_p99_ms: measure::quantile_ms(&times.scale, 0.99),
            scale_requests: times.scale.len(),
            api_errors: times.errors,
            rss_peak_mib: rss as f64 / (1024.0 * 1024.0),
            cpu_secs: cpu,
            sent_mib: (wire.0 - before_wire.0) as f64 / (1024.0 * 1024.0),
            received_mib: (wire.1 - before_wire.1) as f64 / (1024.0 * 1024.0),
            moved,
            restarted,
        };
        if self.config.flags.verify {
            self.verify().await?;
        }
        Ok(outcome)
    }

    /// Lists every app's dynos through the API and checks the scheduler's `up` ones are the
    /// ones the hosts run.
    pub async fn verify(&self) -> anyhow::Result<()> {
        let mut on_hosts: HashMap<String, HashSet<String>> = HashMap::new();
        for h in self.fleet.running() {
            let st = h.state.lock().unwrap_or_else(|e| e.into_inner());
            for (id, d) in &st.dynos {
                on_hosts
                    .entry(d.app.clone())
                    .or_default()
                    .insert(id.clone());
            }
        }
        let api = &self.api;
        let on_hosts = &on_hosts;
        each(&self.apps, |app| async move {
            let up: HashSet<String> = api
                .dynos(&app)
                .await?
                .iter()
                .filter(|d| d["state"] == "up")
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect();
            let hosts = on_hosts.get(&app).cloned().unwrap_or_default();
            if up != hosts {
                anyhow::bail!(
                    "{app}: the scheduler lists {} dynos up, the hosts run {} ({} differ)",
                    up.len(),
                    hosts.len(),
                    up.symmetric_difference(&hosts).count()
                );
            }
            Ok(())
        })
        .await
    }
}
