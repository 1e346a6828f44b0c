//! The simulated hosts, each a task in this process holding its own AgentLink connection, and
//! the census: how many of the dynos the users asked for the hosts report `up`, as the
//! simulator sees it (the scheduler's own count is checked separately, see `scenario`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::agent::{Link, SimHost};

/// What one app should run: `quantity` web dynos of `release` (0: any release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub quantity: u32,
    pub release: u32,
}

#[derive(Debug)]
pub struct Fleet {
    pub hosts: Vec<Arc<SimHost>>,
    tasks: Vec<Option<JoinHandle<()>>>,
    link: Arc<Link>,
}

/// The hosts' view of the wanted dynos.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Wanted dynos reported up (at most each app's quantity).
    pub up: u64,
    /// Dynos of the wanted apps beyond that: of an older release, or too many.
    pub extra: u64,
    /// Running hosts with an open stream.
    pub linked: usize,
    pub running_hosts: usize,
}

impl Fleet {
    pub fn new(hosts: Vec<Arc<SimHost>>, link: Arc<Link>) -> Fleet {
        let tasks = hosts.iter().map(|_| None).collect();
        Fleet { hosts, tasks, link }
    }

    /// Starts host `i`'s agent (it dials at once).
    pub fn start(&mut self, i: usize) {
        let host = self.hosts[i].clone();
        self.tasks[i] = Some(tokio::spawn(host.run(self.link.clone())));
    }

    /// Host `i` is lost: its link closes and it says nothing more, as when a machine dies.
    pub fn stop(&mut self, i: usize) {
        if let Some(task) = self.tasks[i].take() {
            task.abort();
        }
        self.hosts[i].linked.store(false, Ordering::Relaxed);
    }

    pub fn running(&self) -> impl Iterator<Item = &Arc<SimHost>> {
        self.hosts
            .iter()
            .zip(&self.tasks)
            .filter(|(_, t)| t.is_some())
            .map(|(h, _)| h)
    }

    /// Counts the wanted dynos on the running hosts.
    pub fn census(&self, want: &HashMap<String, Want>) -> Census {
        let mut per_app: HashMap<&str, u32> = HashMap::new();
        let mut census = Census::default();
        for host in self.running() {
            census.running_hosts += 1;
            if host.linked.load(Ordering::Relaxed) {
                census.linked += 1;
            }
            let st = host.state.lock().unwrap_or_else(|e| e.into_inner());
            for d in st.dynos.values() {
                let Some(w) = want.get(&d.app) else { continue };
                if w.release != 0 && d.release != w.release {
                    census.extra += 1;
                    continue;
                }
                let n = per_app
                    .entry(want.get_key_value(&d.app).map_or("", |(k, _)| k.as_str()))
                    .or_default();
                *n += 1;
                if *n > w.quantity {
                    census.extra += 1;
                } else {
                    census.up += 1;
                }
            }
        }
        census
    }

    /// The ids of every dyno the running hosts run.
    pub fn dyno_ids(&self) -> HashSet<String> {
        self.running()
            .flat_map(|h| {
                let st = h.state.lock().unwrap_or_else(|e| e.into_inner());
                st.dynos.keys().cloned().collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in self.tasks.iter_mut().filter_map(Option::take) {
            task.abort();
        }
    }
}
