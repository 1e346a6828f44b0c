//! The placement planner: chooses a host for each dyno.
//!
//! It is pure (no I/O, no async, no clock) and deterministic: the same hosts, the same
//! placed dynos and the same requests in the same order always give the same hosts. The
//! scheduler builds a [`Planner`] from a snapshot of the cluster and then asks it for one
//! host per dyno with [`Planner::place`], which also records the dyno so the next
//! request sees it; [`Planner::remove`] gives a stopped dyno's room back.
//!
//! # Filters
//!
//! Like Nomad, a host must first pass every filter, in this order (the first one that
//! fails is the reason the host is rejected, counted in [`Rejection`]):
//!
//! 1. it is eligible: connected and not draining;
//! 2. it offers the requested stack;
//! 3. its free memory (`memory_bytes` minus what its dynos use) is at least the
//!    dyno's memory;
//! 4. it has a free dyno slot (fewer dynos than `dyno_slots`).
//!
//! # Ranking
//!
//! The hosts that pass are ranked by, in order:
//!
//! 1. the fewest dynos of the same app and process type already on the host, so that a
//!    process type is spread over hosts and losing one host loses as few as possible;
//! 2. the lowest fraction of memory used once the dyno is placed, so that load evens
//!    out (compared exactly by cross-multiplying in `u128`, never with floats, so the
//!    result cannot depend on rounding);
//! 3. the host id (byte order), so that ties are broken the same way every time.
//!
//! # Why the indexes
//!
//! Scanning every host for every dyno costs hosts × dynos: 10,000 hosts and 1,000,000
//! dynos would be 10^10 host checks. Instead the planner keeps, per stack and per host
//! memory size, the hosts that are eligible and have a free slot ordered by memory used
//! (then by id). Within one memory size, less used means both a lower fraction after
//! placement and more free memory, so walking that order from the start meets the hosts
//! in ranking order (ignoring the spread rule), and the walk can stop at the first host
//! without room for the dyno: every later host has even less. It skips the hosts that
//! already hold at least as many of this process type as the best one so far (each host
//! counts its dynos per process type) and stops at the first host holding none, since
//! nothing in that size can rank better. The best of each size are then compared by the
//! full ranking. A cluster has few host sizes, so a placement costs a few ordered-set
//! steps plus one step per host running this process type that comes earlier in the
//! order: about a microsecond at 10,000 hosts. The slow case is a process type already
//! on nearly every host of its stack, where the walk visits them all (around a hundred
//! microseconds at 10,000 hosts). Only when no host fits does the planner look at every
//! host, to count why each was rejected. Strings (hosts, stacks, apps, process types) are
//! interned to small integers so the hot path compares and hashes integers; hosts are
//! numbered in id order so that the number order is the tie-break order.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes the planner's own small integers (interned ids) with one multiply: they are
/// not chosen by users, so the DoS-resistant (and several times slower) default hash
/// buys nothing on the hot path.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // Fx-style mixing; the rotate spreads earlier fields of tuple keys.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// A map keyed by interned ids.
type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A host as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// The host's id (unique; later duplicates are ignored).
    pub id: String,
    /// The stacks (root filesystems) the host can run.
    pub stacks: Vec<String>,
    /// The memory the host offers to dynos.
    pub memory_bytes: u64,
    /// How many dynos the host may run at once.
    pub dyno_slots: u32,
    /// Whether new dynos may go there: connected and not draining.
    pub eligible: bool,
    /// Room already taken by dynos not given as [`Placed`]: those whose spread is never
    /// asked about (other apps' dynos, when placing some apps' only). They count for
    /// memory and slots like placed dynos, so the caller need not list every dyno of a
    /// large cluster to place a few.
    pub taken: Room,
}

/// Memory reserved and dyno slots taken on a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Room {
    pub memory_bytes: u64,
    pub dynos: u32,
}

/// A dyno already on a host, which takes its share of the host's room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The host it runs on.
    pub host: String,
    /// Its app.
    pub app: String,
    /// Its process type (`web`, `worker`, ...).
    pub process_type: String,
    /// The memory it reserves.
    pub memory_bytes: u64,
}

/// One dyno to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its app.
    pub app: String,
    /// Its process type.
    pub process_type: String,
    /// The stack it needs.
    pub stack: String,
    /// The memory it reserves (its dyno size).
    pub memory_bytes: u64,
}

/// Why no host can run a dyno: how many hosts each filter rejected, in filter order
/// (each host is counted once, under the first filter it fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The stack the dyno needs.
    pub stack: String,
    /// The memory the dyno needs.
    pub memory_bytes: u64,
    /// How many hosts there are.
    pub hosts: usize,
    /// Hosts that are not connected or are draining.
    pub not_eligible: usize,
    /// Hosts without the stack.
    pub no_stack: usize,
    /// Hosts with too little free memory.
    pub no_memory: usize,
    /// Hosts with every dyno slot taken.
    pub no_slots: usize,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let memory = Memory(self.memory_bytes);
        if self.hosts == 0 {
            return write!(
                f,
                "no host can run this dyno: the cluster has no hosts; add a host with stack {}",
                self.stack
            );
        }
        write!(
            f,
            "no host can run this dyno (stack {stack}, {memory}): of {hosts} {host_word}, \
             {not_eligible} not connected or draining, {no_stack} without stack {stack}, \
             {no_memory} without {memory} free memory, {no_slots} without a free dyno slot; \
             add hosts with stack {stack}",
            stack = self.stack,
            hosts = self.hosts,
            host_word = if self.hosts == 1 { "host" } else { "hosts" },
            not_eligible = self.not_eligible,
            no_stack = self.no_stack,
            no_memory = self.no_memory,
            no_slots = self.no_slots,
        )?;
        if self.no_memory > 0 {
            write!(f, " or choose a smaller dyno size")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}

/// Memory shown the way dyno sizes are written (`512 MB`), bytes when not whole MB.
struct Memory(u64);

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MB: u64 = 1024 * 1024;
        if self.0 % MB == 0 {
            write!(f, "{} MB", self.0 / MB)
        } else {
            write!(f, "{} bytes", self.0)
        }
    }
}

/// A host's state, numbered by its position in id order.
#[derive(Debug)]
struct Host {
    id: String,
    /// Interned stacks, sorted and deduplicated.
    stacks: Vec<u32>,
    memory: u64,
    used: u64,
    slots: u32,
    dynos: u32,
    eligible: bool,
    /// (app, process type) to how many of its dynos run here (only those with at
    /// least one). Kept per host rather than in one big table, so the tables stay
    /// small and growing one never stalls a placement for long.
    same: IdMap<(u32, u32), u32>,
    /// Where the host sits in the indexes: (stack, position in that stack's classes).
    classes: Vec<(u32, u32)>,
}

impl Host {
    /// Whether the host belongs in the load indexes: it could take some dyno.
    fn indexed(&self) -> bool {
        self.eligible && self.dynos < self.slots
    }
}

/// The indexed hosts of one stack with one memory size, by (memory used, host number).
#[derive(Debug)]
struct Class {
    memory: u64,
    by_load: BTreeSet<(u64, u32)>,
}

/// The best host found so far for a request.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    host: u32,
    same: u32,
    used: u64,
    memory: u64,
}

/// Places dynos on hosts; see the module documentation for the rules.
///
/// Names are interned for the planner's whole life, so the names of deleted apps stay
/// until it is rebuilt (as when the scheduler restarts); that is a few bytes per name.
#[derive(Debug)]
pub struct Planner {
    hosts: Vec<Host>,
    host_ids: HashMap<String, u32>,
    stacks: HashMap<String, u32>,
    /// Per interned stack, its classes (one per host memory size).
    classes: Vec<Vec<Class>>,
    apps: HashMap<String, u32>,
    process_types: HashMap<String, u32>,
}

impl Planner {
    /// Builds a planner from the hosts and the dynos already on them. Dynos on hosts
    /// that are not in `hosts` are ignored: they take no room the planner can give.
    pub fn new(hosts: Vec<HostSpec>, placed: impl IntoIterator<Item = Placed>) -> Planner {
        let mut specs = hosts;
        // Stable, so the first of duplicate ids is the one kept.
        specs.sort_by(|a, b| a.id.cmp(&b.id));
        specs.dedup_by(|later, earlier| later.id == earlier.id);

        let mut stacks = HashMap::new();
        let mut planner_hosts = Vec::with_capacity(specs.len());
        let mut host_ids = HashMap::with_capacity(specs.len());
        for (number, spec) in (0u32..).zip(specs) {
            let mut host_stacks: Vec<u32> = spec
                .stacks
                .into_iter()
                .map(|stack| {
                    let next = u32::try_from(stacks.len()).unwrap_or(u32::MAX);
                    *stacks.entry(stack).or_insert(next)
                })
                .collect();
            host_stacks.sort_unstable();
            host_stacks.dedup();
            host_ids.insert(spec.id.clone(), number);
            planner_hosts.push(Host {
                id: spec.id,
                stacks: host_stacks,
                memory: spec.memory_bytes,
                used: spec.taken.memory_bytes,
                slots: spec.dyno_slots,
                dynos: spec.taken.dynos,
                eligible: spec.eligible,
                same: IdMap::default(),
                classes: Vec::new(),
            });
        }

        let mut planner = Planner {
            hosts: planner_hosts,
            host_ids,
            classes: (0..stacks.len()).map(|_| Vec::new()).collect(),
            stacks,
            apps: HashMap::new(),
            process_types: HashMap::new(),
        };
        for dyno in placed {
            if let Some(&host) = planner.host_ids.get(&dyno.host) {
                let pair = planner.intern_pair(&dyno.app, &dyno.process_type);
                planner.record(host, pair, dyno.memory_bytes);
            }
        }
        for number in 0..planner.hosts.len() {
            let host = &planner.hosts[number];
            let mut classes = Vec::with_capacity(host.stacks.len());
            for &stack in &host.stacks {
                let stack_classes = &mut planner.classes[stack as usize];
                let position = match stack_classes.iter().position(|c| c.memory == host.memory) {
                    Some(position) => position,
                    None => {
                        stack_classes.push(Class {
                            memory: host.memory,
                            by_load: BTreeSet::new(),
                        });
                        stack_classes.len() - 1
                    }
                };
                classes.push((stack, u32::try_from(position).unwrap_or(u32::MAX)));
            }
            planner.hosts[number].classes = classes;
            planner.index(u32::try_from(number).unwrap_or(u32::MAX));
        }
        planner
    }

    /// Chooses a host for one dyno and records the dyno there, so the next call sees
    /// it. Returns the host id, or why no host can run the dyno.
    pub fn place(&mut self, req: &Request) -> Result<&str, Rejection> {
        let Some(host) = self.choose(req) else {
            return Err(self.rejection(req));
        };
        let pair = self.intern_pair(&req.app, &req.process_type);
        self.unindex(host);
        self.record(host, pair, req.memory_bytes);
        self.index(host);
        Ok(&self.hosts[host as usize].id)
    }

    /// Forgets one dyno (e.g. it stopped) so its room is free again. Returns false,
    /// changing nothing, when the host is unknown or runs no dyno of that app and
    /// process type.
    pub fn remove(&mut self, host: &str, app: &str, process_type: &str, memory_bytes: u64) -> bool {
        let (Some(&number), Some(&app), Some(&process_type)) = (
            self.host_ids.get(host),
            self.apps.get(app),
            self.process_types.get(process_type),
        ) else {
            return false;
        };
        let pair = (app, process_type);
        let Some(count) = self.hosts[number as usize].same.get_mut(&pair) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.hosts[number as usize].same.remove(&pair);
        }
        self.unindex(number);
        let host = &mut self.hosts[number as usize];
        host.used = host.used.saturating_sub(memory_bytes);
        host.dynos = host.dynos.saturating_sub(1);
        self.index(number);
        true
    }

    /// The best host for `req` by the filters and ranking, using the indexes.
    fn choose(&self, req: &Request) -> Option<u32> {
        let stack = *self.stacks.get(&req.stack)?;
        // Unknown names mean no dyno of this process type runs anywhere yet.
        let pair = self
            .apps
            .get(&req.app)
            .zip(self.process_types.get(&req.process_type))
            .map(|(&app, &process_type)| (app, process_type));
        let need = u128::from(req.memory_bytes);
        let mut best: Option<Candidate> = None;
        for class in &self.classes[stack as usize] {
            // The best host of this class: the first in load order among those with the
            // fewest dynos of this process type.
            let mut class_best: Option<Candidate> = None;
            for &(used, host) in &class.by_load {
                if u128::from(used) + need > u128::from(class.memory) {
                    break; // every later host has even less free memory
                }
                let same = pair
                    .and_then(|pair| self.hosts[host as usize].same.get(&pair))
                    .copied()
                    .unwrap_or(0);
                if class_best.is_some_and(|b| same >= b.same) {
                    continue;
                }
                class_best = Some(Candidate {
                    host,
                    same,
                    used,
                    memory: class.memory,
                });
                if same == 0 {
                    break;
                }
            }
            if let Some(found) = class_best {
                if best.is_none_or(|b| rank(&found, &b, req.memory_bytes) == Ordering::Less) {
                    best = Some(found);
                }
            }
        }
        best.map(|b| b.host)
    }

    /// Counts, for a request no host can take, why each host was rejected.
    fn rejection(&self, req: &Request) -> Rejection {
        let stack = self.stacks.get(&req.stack).copied();
        let mut rejection = Rejection {
            stack: req.stack.clone(),
            memory_bytes: req.memory_bytes,
            hosts: self.hosts.len(),
            not_eligible: 0,
            no_stack: 0,
            no_memory: 0,
            no_slots: 0,
        };
        for host in &self.hosts {
            if !host.eligible {
                rejection.not_eligible += 1;
            } else if stack.is_none_or(|s| host.stacks.binary_search(&s).is_err()) {
                rejection.no_stack += 1;
            } else if host.memory.saturating_sub(host.used) < req.memory_bytes {
                rejection.no_memory += 1;
            } else if host.dynos >= host.slots {
                rejection.no_slots += 1;
            }
        }
        rejection
    }

    fn intern_pair(&mut self, app: &str, process_type: &str) -> (u32, u32) {
        (
            intern(&mut self.apps, app),
            intern(&mut self.process_types, process_type),
        )
    }

    /// Adds a dyno's share to a host (the caller keeps the indexes in step).
    fn record(&mut self, host: u32, pair: (u32, u32), memory_bytes: u64) {
        let host = &mut self.hosts[host as usize];
        *host.same.entry(pair).or_insert(0) += 1;
        host.used = host.used.saturating_add(memory_bytes);
        host.dynos = host.dynos.saturating_add(1);
    }

    /// Takes a host out of the load indexes (before its load changes).
    fn unindex(&mut self, number: u32) {
        let host = &self.hosts[number as usize];
        if host.indexed() {
            for &(stack, class) in &host.classes {
                self.classes[stack as usize][class as usize]
                    .by_load
                    .remove(&(host.used, number));
            }
        }
    }

    /// Puts a host back in the load indexes (after its load changed), if it can take
    /// a dyno at all.
    fn index(&mut self, number: u32) {
        let host = &self.hosts[number as usize];
        if host.indexed() {
            for &(stack, class) in &host.classes {
                self.classes[stack as usize][class as usize]
                    .by_load
                    .insert((host.used, number));
            }
        }
    }
}

/// Interns a string to a small integer, numbering new strings in order of arrival.
fn intern(table: &mut HashMap<String, u32>, name: &str) -> u32 {
    if let Some(&id) = table.get(name) {
        return id;
    }
    let id = u32::try_from(table.len()).unwrap_or(u32::MAX);
    table.insert(name.to_owned(), id);
    id
}

/// Orders two feasible hosts for a dyno of `need` bytes: fewer dynos of the same
/// process type, then the lower fraction of memory used after placement, then the
/// lower host number (id order). A host with no memory at all counts as fullest.
fn rank(a: &Candidate, b: &Candidate, need: u64) -> Ordering {
    a.same
        .cmp(&b.same)
        .then_with(|| {
            let a_used = u128::from(a.used) + u128::from(need);
            let b_used = u128::from(b.used) + u128::from(need);
            match (a.memory, b.memory) {
                (0, 0) => Ordering::Equal,
                (0, _) => Ordering::Greater,
                (_, 0) => Ordering::Less,
                (a_memory, b_memory) => {
                    (a_used * u128::from(b_memory)).cmp(&(b_used * u128::from(a_memory)))
                }
            }
        })
        .then_with(|| a.host.cmp(&b.host))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn host(id: &str, stacks: &[&str], memory_bytes: u64, dyno_slots: u32) -> HostSpec {
        HostSpec {
            id: id.to_owned(),
            stacks: stacks.iter().map(|s| (*s).to_owned()).collect(),
            memory_bytes,
            dyno_slots,
            eligible: true,
            taken: Room::default(),
        }
    }

    fn request(app: &str, process_type: &str, stack: &str, memory_bytes: u64) -> Request {
        Request {
            app: app.to_owned(),
            process_type: process_type.to_owned(),
            stack: stack.to_owned(),
            memory_bytes,
        }
    }

    fn placed(host: &str, app: &str, process_type: &str, memory_bytes: u64) -> Placed {
        Placed {
            host: host.to_owned(),
            app: app.to_owned(),
            process_type: process_type.to_owned(),
            memory_bytes,
        }
    }

    fn place_all(planner: &mut Planner, req: &Request, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| planner.place(req).expect("placed").to_owned())
            .collect()
    }

    #[test]
    fn spreads_a_process_type_two_and_two() {
        let hosts = vec![
            host("b", &["bookworm"], 8 * GIB, 10),
            host("a", &["bookworm"], 8 * GIB, 10),
        ];
        let mut planner = Planner::new(hosts, []);
        let web = request("shop", "web", "bookworm", 512 * MIB);
        let got = place_all(&mut planner, &web, 4);
        assert_eq!(got, ["a", "b", "a", "b"]);
    }

    #[test]
    fn spread_beats_load() {
        let hosts = vec![
            host("a", &["bookworm"], 8 * GIB, 10),
            host("b", &["bookworm"], 8 * GIB, 10),
        ];
        let busy = (0..5).map(|i| placed("b", &format!("other{i}"), "web", GIB));
        let mut planner = Planner::new(hosts, busy);
        let web = request("shop", "web", "bookworm", 512 * MIB);
        let mut got = place_all(&mut planner, &web, 2);
        got.sort();
        assert_eq!(got, ["a", "b"]);
    }

    #[test]
    fn least_loaded_fraction_after_placement_wins() {
        // Both empty; 1 GiB on a 2 GiB host is half full, on a 16 GiB host 1/16.
        let hosts = vec![
            host("a", &["bookworm"], 2 * GIB, 10),
            host("b", &["bookworm"], 16 * GIB, 10),
        ];
        let mut planner = Planner::new(hosts, []);
        let req = request("shop", "web", "bookworm", GIB);
        assert_eq!(planner.place(&req), Ok("b"));
    }

    #[test]
    fn stack_filter() {
        let hosts = vec![
            host("a", &["bullseye"], 8 * GIB, 10),
            host("b", &["bookworm", "bullseye"], 8 * GIB, 10),
            host("c", &["bullseye"], 8 * GIB, 10),
        ];
        let mut planner = Planner::new(hosts, []);
        let req = request("shop", "web", "bookworm", 512 * MIB);
        assert_eq!(place_all(&mut planner, &req, 3), ["b", "b", "b"]);
        let err = planner
            .place(&request("shop", "web", "trixie", 512 * MIB))
            .expect_err("no host has trixie");
        assert_eq!((err.hosts, err.no_stack), (3, 3));
    }

    #[test]
    fn memory_and_slot_filters_explain_the_rejection() {
        let mut draining = host("d", &["bookworm"], 64 * GIB, 100);
        draining.eligible = false;
        let hosts = vec![
            host("a", &["bookworm"], 2 * GIB, 100),
            host("b", &["bookworm"], 2 * GIB, 100),
            host("c", &["bookworm"], 64 * GIB, 1),
            draining,
            host("e", &["bullseye"], 64 * GIB, 100),
        ];
        let mut planner = Planner::new(hosts, [placed("c", "blog", "web", 512 * MIB)]);
        let req = request("shop", "web", "bookworm", 3 * GIB);
        let err = planner.place(&req).expect_err("nothing fits 3 GiB");
        assert_eq!(
            err,
            Rejection {
                stack: "bookworm".to_owned(),
                memory_bytes: 3 * GIB,
                hosts: 5,
                not_eligible: 1,
                no_stack: 1,
                no_memory: 2,
                no_slots: 1,
            }
        );
        assert_eq!(
            err.to_string(),
            "no host can run this dyno (stack bookworm, 3072 MB): of 5 hosts, \
             1 not connected or draining, 1 without stack bookworm, \
             2 without 3072 MB free memory, 1 without a free dyno slot; \
             add hosts with stack bookworm or choose a smaller dyno size"
        );
        let empty = Planner::new(Vec::new(), [])
            .place(&req)
            .expect_err("no hosts");
        assert_eq!(
            empty.to_string(),
            "no host can run this dyno: the cluster has no hosts; add a host with stack bookworm"
        );
    }

    #[test]
    fn deterministic() {
        let run = || {
            let hosts: Vec<HostSpec> = (0..20)
                .map(|i| host(&format!("h{i:02}"), &["bookworm"], 8 * GIB, 20))
                .collect();
            let mut planner = Planner::new(hosts, []);
            let mut rng = XorShift(7);
            (0..200)
                .map(|_| {
                    let app = format!("app{}", rng.below(10));
                    let req = request(&app, "web", "bookworm", (1 + rng.below(4)) * 256 * MIB);
                    planner.place(&req).map(str::to_owned)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn room_taken_counts_as_placed_dynos_of_other_apps() {
        let specs = vec![
            host("a", &["bookworm"], 4 * GIB, 3),
            host("b", &["bookworm"], 4 * GIB, 3),
        ];
        let others = [
            placed("a", "blog", "web", 3 * GIB),
            placed("b", "blog", "web", GIB),
            placed("b", "wiki", "web", GIB),
        ];
        let mut listed = Planner::new(specs.clone(), others.clone());
        let mut taken = specs;
        taken[0].taken = Room {
            memory_bytes: 3 * GIB,
            dynos: 1,
        };
        taken[1].taken = Room {
            memory_bytes: 2 * GIB,
            dynos: 2,
        };
        let mut summed = Planner::new(taken, []);
        let req = request("shop", "web", "bookworm", GIB);
        let got: Vec<_> = (0..4)
            .map(|_| summed.place(&req).map(str::to_owned))
            .collect();
        let want: Vec<_> = (0..4)
            .map(|_| listed.place(&req).map(str::to_owned))
            .collect();
        assert_eq!(got, want);
        assert_eq!(got[..2], [Ok("b".to_owned()), Ok("a".to_owned())]);
        assert!(
            got[2..].iter().all(Result::is_err),
            "every slot or byte taken: {got:?}"
        );
    }

    #[test]
    fn remove_frees_room() {
        let hosts = vec![host("a", &["bookworm"], 2 * GIB, 2)];
        let mut planner = Planner::new(hosts, []);
        let req = request("shop", "web", "bookworm", GIB);
        place_all(&mut planner, &req, 2);
        assert!(planner.place(&req).is_err());
        assert!(!planner.remove("a", "shop", "worker", GIB), "no such dyno");
        assert!(!planner.remove("z", "shop", "web", GIB), "no such host");
        assert!(planner.remove("a", "shop", "web", GIB));
        assert_eq!(planner.place(&req), Ok("a"));
    }

    /// A tiny deterministic PRNG, so the random tests repeat exactly.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A host in the oracle: its spec and what runs on it.
    struct OracleHost {
        spec: HostSpec,
        used: u64,
        dynos: u32,
        same: HashMap<(String, String), u32>,
    }

    /// The definition, written the slow and obvious way: check every host.
    struct Oracle {
        hosts: Vec<OracleHost>,
    }

    impl Oracle {
        fn new(specs: &[HostSpec], placed: &[Placed]) -> Oracle {
            let mut hosts: Vec<OracleHost> = Vec::new();
            for spec in specs {
                if !hosts.iter().any(|h| h.spec.id == spec.id) {
                    hosts.push(OracleHost {
                        spec: spec.clone(),
                        used: spec.taken.memory_bytes,
                        dynos: spec.taken.dynos,
                        same: HashMap::new(),
                    });
                }
            }
            let mut oracle = Oracle { hosts };
            for dyno in placed {
                if let Some(h) = oracle.hosts.iter_mut().find(|h| h.spec.id == dyno.host) {
                    h.used += dyno.memory_bytes;
                    h.dynos += 1;
                    let key = (dyno.app.clone(), dyno.process_type.clone());
                    *h.same.entry(key).or_insert(0) += 1;
                }
            }
            oracle
        }

        fn place(&mut self, req: &Request) -> Result<String, Rejection> {
            let mut rejection = Rejection {
                stack: req.stack.clone(),
                memory_bytes: req.memory_bytes,
                hosts: self.hosts.len(),
                not_eligible: 0,
                no_stack: 0,
                no_memory: 0,
                no_slots: 0,
            };
            let key = (req.app.clone(), req.process_type.clone());
            let mut best: Option<usize> = None;
            for (i, h) in self.hosts.iter().enumerate() {
                if !h.spec.eligible {
                    rejection.not_eligible += 1;
                    continue;
                }
                if !h.spec.stacks.contains(&req.stack) {
                    rejection.no_stack += 1;
                    continue;
                }
                if h.spec.memory_bytes.saturating_sub(h.used) < req.memory_bytes {
                    rejection.no_memory += 1;
                    continue;
                }
                if h.dynos >= h.spec.dyno_slots {
                    rejection.no_slots += 1;
                    continue;
                }
                let better = match best {
                    None => true,
                    Some(b) => {
                        let b = &self.hosts[b];
                        let same = h.same.get(&key).copied().unwrap_or(0);
                        let b_same = b.same.get(&key).copied().unwrap_or(0);
                        // Fractions after placement, as exact rationals.
                        let after = u128::from(h.used + req.memory_bytes);
                        let b_after = u128::from(b.used + req.memory_bytes);
                        let load = after * u128::from(b.spec.memory_bytes);
                        let b_load = b_after * u128::from(h.spec.memory_bytes);
                        (same, load, &h.spec.id) < (b_same, b_load, &b.spec.id)
                    }
                };
                if better {
                    best = Some(i);
                }
            }
            let h = &mut self.hosts[best.ok_or(rejection)?];
            h.used += req.memory_bytes;
            h.dynos += 1;
            *h.same.entry(key).or_insert(0) += 1;
            Ok(h.spec.id.clone())
        }

        fn remove(&mut self, host: &str, app: &str, process_type: &str, memory: u64) -> bool {
            let Some(h) = self.hosts.iter_mut().find(|h| h.spec.id == host) else {
                return false;
            };
            let key = (app.to_owned(), process_type.to_owned());
            match h.same.get_mut(&key) {
                Some(n) if *n > 0 => *n -= 1,
                _ => return false,
            }
            h.used = h.used.saturating_sub(memory);
            h.dynos = h.dynos.saturating_sub(1);
            true
        }
    }

    #[test]
    fn matches_the_naive_definition_on_random_clusters() {
        let stacks = ["bookworm", "bullseye", "trixie"];
        let sizes = [256 * MIB, 512 * MIB, GIB, 2560 * MIB, 7 * GIB];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut placements, mut refusals) = (0, 0);
        for round in 0..40 {
            let n_hosts = 1 + rng.below(30) as usize;
            let memory_sizes = [4 * GIB, 8 * GIB, 16 * GIB, 12 * GIB + 3 * MIB];
            let specs: Vec<HostSpec> = (0..n_hosts)
                .map(|i| {
                    let mut host_stacks: Vec<&str> = stacks
                        .iter()
                        .copied()
                        .filter(|_| rng.below(3) > 0)
                        .collect();
                    if host_stacks.is_empty() {
                        host_stacks.push(stacks[i % stacks.len()]);
                    }
                    let mut spec = host(
                        // Unordered ids (and the odd duplicate) to exercise numbering.
                        &format!("h{}", rng.below(n_hosts as u64 * 2)),
                        &host_stacks,
                        memory_sizes[rng.below(memory_sizes.len() as u64) as usize],
                        1 + rng.below(12) as u32,
                    );
                    spec.eligible = rng.below(10) > 0;
                    // Some room taken by dynos the planner is not told apart.
                    if rng.below(3) == 0 {
                        spec.taken = Room {
                            memory_bytes: rng.below(4) * GIB,
                            dynos: rng.below(4) as u32,
                        };
                    }
                    spec
                })
                .collect();
            let apps = 1 + rng.below(6);
            let make_request = |rng: &mut XorShift| Request {
                app: format!("app{}", rng.below(apps)),
                process_type: ["web", "worker"][rng.below(2) as usize].to_owned(),
                stack: stacks[rng.below(stacks.len() as u64) as usize].to_owned(),
                memory_bytes: sizes[rng.below(sizes.len() as u64) as usize],
            };
            // Some dynos already running, including on unknown hosts and overcommitted.
            let initial: Vec<Placed> = (0..rng.below(40))
                .map(|_| {
                    let req = make_request(&mut rng);
                    placed(
                        &format!("h{}", rng.below(n_hosts as u64 * 2 + 3)),
                        &req.app,
                        &req.process_type,
                        req.memory_bytes,
                    )
                })
                .collect();
            let mut planner = Planner::new(specs.clone(), initial.clone());
            let mut oracle = Oracle::new(&specs, &initial);
            let mut running: Vec<Placed> = initial;
            for step in 0..300 {
                if !running.is_empty() && rng.below(3) == 0 {
                    let dyno = running.swap_remove(rng.below(running.len() as u64) as usize);
                    let args = (&dyno.host, &dyno.app, &dyno.process_type, dyno.memory_bytes);
                    assert_eq!(
                        planner.remove(args.0, args.1, args.2, args.3),
                        oracle.remove(args.0, args.1, args.2, args.3),
                        "round {round} step {step}: remove {dyno:?}"
                    );
                    continue;
                }
                let req = make_request(&mut rng);
                let got = planner.place(&req).map(str::to_owned);
                let want = oracle.place(&req);
                assert_eq!(got, want, "round {round} step {step}: {req:?}");
                match got {
                    Ok(host) => {
                        placements += 1;
                        running.push(placed(&host, &req.app, &req.process_type, req.memory_bytes));
                    }
                    Err(_) => refusals += 1,
                }
            }
        }
        assert!(placements > 3000, "only {placements} placements");
        assert!(refusals > 500, "only {refusals} refusals");
    }
}
