//! Planner benchmark: places 1,000,000 dynos on 10,000 simulated hosts, one `place`
//! call at a time, and times each decision; then times rebuilding the planner from a
//! snapshot of those dynos, as the scheduler does when it restarts.
//!
//! Run with `cargo bench -p manifold-scheduler --bench planner`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use manifold_scheduler::planner::{HostSpec, Placed, Planner, Request, Room};

const HOSTS: usize = 10_000;
const DYNOS: usize = 1_000_000;
const APPS: u64 = 20_000;
const PROCESS_TYPES: [&str; 3] = ["web", "worker", "clock"];
const STACKS: [&str; 2] = ["heroku-22", "heroku-24"];
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A tiny deterministic PRNG, so every run places the same dynos.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// 64 GiB / 200 slots each; every tenth host offers only heroku-24; a few are
/// disconnected or draining.
fn hosts() -> Vec<HostSpec> {
    (0..HOSTS)
        .map(|i| HostSpec {
            id: format!("host-{i:05}"),
            stacks: if i % 10 == 0 {
                vec![STACKS[1].to_owned()]
            } else {
                STACKS.iter().map(|s| (*s).to_owned()).collect()
            },
            memory_bytes: 64 * GIB,
            dyno_slots: 200,
            eligible: i % 1000 != 7,
            taken: Room::default(),
        })
        .collect()
}

/// Dyno sizes mostly small, some larger, so that 1,000,000 dynos fill about 97% of
/// the memory (and about half the slots): the cluster ends nearly full, and since load
/// is spread evenly every placement still fits.
fn size(rng: &mut XorShift) -> u64 {
    match rng.below(100) {
        0..=84 => 512 * MIB,
        85..=96 => GIB,
        _ => 2560 * MIB,
    }
}

fn requests() -> Vec<Request> {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    (0..DYNOS)
        .map(|_| {
            let app = rng.below(APPS);
            Request {
                app: format!("app-{app}"),
                process_type: PROCESS_TYPES[rng.below(3) as usize].to_owned(),
                // A third of the apps are still on heroku-22.
                stack: STACKS[usize::from(app % 3 != 0)].to_owned(),
                memory_bytes: size(&mut rng),
            }
        })
        .collect()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let hosts = hosts();
    let requests = requests();

    let mut planner = Planner::new(hosts.clone(), []);
    let mut times = Vec::with_capacity(DYNOS);
    let mut placed = Vec::with_capacity(DYNOS);
    let mut rejected = 0usize;
    let started = Instant::now();
    for req in &requests {
        let t = Instant::now();
        let result = planner.place(black_box(req));
        times.push(t.elapsed());
        match result {
            Ok(host) => placed.push(Placed {
                host: host.to_owned(),
                app: req.app.clone(),
                process_type: req.process_type.clone(),
                memory_bytes: req.memory_bytes,
            }),
            Err(_) => rejected += 1,
        }
    }
    let total = started.elapsed();
    let decided: Duration = times.iter().sum();
    times.sort_unstable();
    let pct = |p: usize| micros(times[(times.len() - 1) * p / 100]);
    let used: u64 = placed.iter().map(|p| p.memory_bytes).sum();
    let capacity: u64 = hosts
        .iter()
        .filter(|h| h.eligible)
        .map(|h| h.memory_bytes)
        .sum();
    println!(
        "planner: {} placements on {} hosts: {:.0}/s, p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs",
        requests.len(),
        HOSTS,
        requests.len() as f64 / decided.as_secs_f64(),
        pct(50),
        pct(99),
        micros(times[times.len() - 1]),
    );
    println!(
        "planner: {} placed, {} refused (no room), cluster memory {:.1}% used; loop wall time {:.2} s",
        placed.len(),
        rejected,
        used as f64 * 100.0 / capacity as f64,
        total.as_secs_f64(),
    );

    let snapshot = placed.len();
    let started = Instant::now();
    let rebuilt = Planner::new(hosts.clone(), placed);
    let build = started.elapsed();
    black_box(&rebuilt);
    println!(
        "planner: build from {} placed dynos on {} hosts: {:.0} ms",
        snapshot,
        HOSTS,
        build.as_secs_f64() * 1e3
    );

    // Refusals: the cluster is nearly full, so no host has 8 GiB free, and the planner
    // counts the reasons over every host.
    let huge = Request {
        memory_bytes: 8 * GIB,
        ..requests[0].clone()
    };
    let refusals = 1_000;
    let started = Instant::now();
    for _ in 0..refusals {
        black_box(planner.place(&huge).is_err());
    }
    let took = started.elapsed();
    println!(
        "planner: refusal (no host has 8 GiB free) on {} hosts: {:.1} µs each",
        HOSTS,
        micros(took) / f64::from(refusals),
    );
    if let Err(why) = planner.place(&huge) {
        println!("planner: e.g. {why}");
    }

    // The worst case for the spread rule: one process type scaled across every host,
    // so each placement walks past the hosts that already hold more of it.
    let mut planner = Planner::new(hosts, []);
    let web = Request {
        app: "big".to_owned(),
        process_type: "web".to_owned(),
        stack: STACKS[1].to_owned(),
        memory_bytes: 512 * MIB,
    };
    let scale = 3 * HOSTS;
    let started = Instant::now();
    for _ in 0..scale {
        black_box(planner.place(&web).is_ok());
    }
    let took = started.elapsed();
    println!(
        "planner: one process type scaled to {} dynos on {} hosts: {:.0}/s, {:.1} µs each",
        scale,
        HOSTS,
        scale as f64 / took.as_secs_f64(),
        micros(took) / scale as f64,
    );
}
