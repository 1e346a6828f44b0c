//! Leadership: which replica of the scheduler leads the cluster.
//!
//! Several `manifold-scheduler` processes may share one database; exactly one of them
//! leads: it runs the reconciler (placement, cycling, sleep, the release phase), holds the
//! agents' links and pushes their assignments, keeps the routers' table and issues
//! certificates. The others follow: they serve reads from the database and answer
//! everything else with where the leader is ([`crate::api`]'s follower gate, the AgentLink
//! interceptor in [`crate::hub`]).
//!
//! Election is the database's lease ([`Store::campaign`]), not a consensus of our own: a
//! replica holds the lease for `ttl` by the database's clock and renews it every third of
//! that; a new holder takes it only once it has expired, in a new term. Two guards keep a
//! deposed leader from acting:
//! - **In the database**: every write a leader makes checks, inside its transaction, that
//!   the lease is still its own in its term ([`Store::set_fence`]); a write of a stale term
//!   is refused and changes nothing.
//! - **On its own clock**: a leader counts its lease from when it *sent* the last campaign
//!   that succeeded (earlier than the database started counting), and stops acting as soon
//!   as that much time has passed without another ([`Leadership::holds`]), before it pushes
//!   anything to an agent. A leader cut off from the database therefore steps down by itself
//!   within `ttl`, when the lease may at the earliest pass to another replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::store::{Fence, Store};

/// The lease's length when not set (`--lease-ttl`): a leader's death is noticed and another
/// leads within this plus one campaign interval (a third of it).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);

/// The header (HTTP) and metadata key (gRPC) in which a follower names the leader's URL:
/// the clients' constant, so both sides speak one contract.
pub use manifold_endpoints::LEADER_HEADER;

/// What this replica is in the cluster now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Another replica leads (its API's URL, when the database names one), or none does.
    Follower { leader: Option<String> },
    /// This replica leads in `term`; its last successful campaign was sent at `renewed`.
    Leader { term: u64, renewed: Instant },
}

/// How a campaign ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The lease is ours, in this term.
    Won(u64),
    /// Another replica holds it (at this URL, if it is known).
    Lost(Option<String>),
    /// The database did not answer: nothing is known.
    Failed,
}

impl Role {
    /// The role after a campaign sent at `sent` ended in `outcome`, at `now`.
    pub fn after(&self, outcome: Outcome, sent: Instant, now: Instant, ttl: Duration) -> Role {
        match (self, outcome) {
            (_, Outcome::Won(term)) => Role::Leader {
                term,
                renewed: sent,
            },
            (_, Outcome::Lost(leader)) => Role::Follower { leader },
            // Without an answer a leader leads on until its lease may have run out.
            (Role::Leader { term, renewed }, Outcome::Failed) => {
                if now.saturating_duration_since(*renewed) < ttl {
                    Role::Leader {
                        term: *term,
                        renewed: *renewed,
                    }
                } else {
                    Role::Follower { leader: None }
                }
            }
            (Role::Follower { leader }, Outcome::Failed) => Role::Follower {
                leader: leader.clone(),
            },
        }
    }

    /// How long a campaign sent at `now` may take. A follower's, a third of the lease
    /// (its interval). A leader's, until its lease counted locally runs out, at least that
    /// third: a renewal slowed by the store's queue (a herd of agents' writes) that still
    /// ends within the lease keeps the leadership, where giving up after a third once made a
    /// lone scheduler step down twice in a row and drop every agent's link. Waiting longer
    /// is safe: [`Leadership::holds`] stops the leader acting at the lease's end whether or
    /// not its campaign has answered.
    pub fn campaign_timeout(&self, now: Instant, ttl: Duration) -> Duration {
        let interval = ttl / 3;
        match self {
            Role::Leader { renewed, .. } => (*renewed + ttl)
                .saturating_duration_since(now)
                .max(interval),
            Role::Follower { .. } => interval,
        }
    }

    /// The term this role leads in, if it leads.
    pub fn term(&self) -> Option<u64> {
        match self {
            Role::Leader { term, .. } => Some(*term),
            Role::Follower { .. } => None,
        }
    }
}

/// This replica's role, shared by everything that must act only when leading.
#[derive(Debug)]
pub struct Leadership {
    role: watch::Sender<Role>,
    ttl: Duration,
}

impl Leadership {
    /// A replica that has not won an election yet.
    pub fn follower(ttl: Duration) -> Leadership {
        Leadership {
            role: watch::Sender::new(Role::Follower { leader: None }),
            ttl,
        }
    }

    /// A replica leading in `term` with a lease that never runs out: one that shares its
    /// database with no other (the test harness's scheduler).
    pub fn sole(term: u64) -> Leadership {
        Leadership {
            role: watch::Sender::new(Role::Leader {
                term,
                renewed: Instant::now(),
            }),
            ttl: Duration::MAX,
        }
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Changes of the role, for the leader's duties to start and stop with it.
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// The term in which this replica may act as the leader right now: it leads, and its
    /// lease, counted from when its last successful campaign was sent, has not run out.
    pub fn holds(&self) -> Option<u64> {
        match &*self.role.borrow() {
            Role::Leader { term, renewed } if renewed.elapsed() < self.ttl => Some(*term),
            _ => None,
        }
    }

    /// The leader's API URL as followers tell clients (none when this replica leads).
    pub fn leader_url(&self) -> Option<String> {
        match &*self.role.borrow() {
            Role::Follower { leader } => leader.clone(),
            Role::Leader { .. } => None,
        }
    }

    fn set(&self, role: Role) {
        self.role.send_if_modified(|current| {
            // A renewal only moves `renewed`: subscribers wake on changes of role or term.
            let changed = current.term() != role.term()
                || matches!((&*current, &role), (Role::Follower { leader: a }, Role::Follower { leader: b }) if a != b);
            *current = role;
            changed
        });
    }
}

/// Who this replica is in elections.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Unique to this process (a restarted replica is a new candidate).
    pub holder: String,
    /// Its API's URL, as followers name it to clients.
    pub address: String,
    pub ttl: Duration,
}

impl Candidate {
    /// A candidate for the API at `address`: the holder name is the host's name and a
    /// random suffix, so that two processes never hold the same lease.
    pub fn new(address: String, ttl: Duration) -> Candidate {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "scheduler".to_owned());
        Candidate {
            holder: format!("{host}-{:08x}", rand::random::<u32>()),
            address,
            ttl,
        }
    }
}

/// Campaigns every third of the lease until `shutdown`, keeping `leadership` and the
/// store's fence up to date; on shutdown a leader resigns, so another leads at once.
pub async fn campaign_forever(
    store: Arc<dyn Store>,
    leadership: Arc<Leadership>,
    candidate: Candidate,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let every = candidate.ttl / 3;
    // Terms start at 1: until this replica wins one, every write it tries is refused.
    store.set_fence(Some(Fence {
        holder: candidate.holder.clone(),
        term: 0,
    }));
    tokio::pin!(shutdown);
    loop {
        let sent = Instant::now();
        // A campaign that hangs is a failed one: it must not hold the leader past its lease.
        let outcome = match tokio::time::timeout(
            leadership.role().campaign_timeout(sent, candidate.ttl),
            store.campaign(&candidate.holder, &candidate.address, candidate.ttl),
        )
        .await
        {
            Ok(Ok(Some(term))) => Outcome::Won(term),
            Ok(Ok(None)) => Outcome::Lost(
                store
                    .leader()
                    .await
                    .ok()
                    .flatten()
                    .map(|leader| leader.address),
            ),
            Ok(Err(err)) => {
                tracing::warn!("leadership campaign failed: {err}");
                Outcome::Failed
            }
            Err(_) => {
                tracing::warn!("leadership campaign took longer than {:?}", sent.elapsed());
                Outcome::Failed
            }
        };
        let before = leadership.role();
        let after = before.after(outcome, sent, Instant::now(), candidate.ttl);
        if before.term() != after.term() {
            // Stepping down keeps the old term's fence: it no longer matches the lease, so
            // every write is refused until this replica wins again.
            match after.term() {
                Some(term) => {
                    store.set_fence(Some(Fence {
                        holder: candidate.holder.clone(),
                        term,
                    }));
                    tracing::info!("leading the cluster in term {term}");
                }
                None => tracing::warn!(
                    "no longer leading the cluster (term {}); following",
                    before.term().unwrap_or_default()
                ),
            }
        }
        leadership.set(after);
        tokio::select! {
            () = tokio::time::sleep_until((sent + every).into()) => {}
            () = &mut shutdown => break,
        }
    }
    if let Some(term) = leadership.role().term() {
        leadership.set(Role::Follower { leader: None });
        match store.resign(&candidate.holder, term).await {
            Ok(()) => tracing::info!("resigned the leadership (term {term})"),
            Err(err) => tracing::warn!("cannot resign the leadership: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    fn leader(term: u64, renewed: Instant) -> Role {
        Role::Leader { term, renewed }
    }

    #[test]
    fn a_won_campaign_leads_from_when_it_was_sent() {
        let t0 = Instant::now();
        let sent = t0 + Duration::from_millis(10);
        let now = t0 + Duration::from_millis(900);
        let follower = Role::Follower { leader: None };
        assert_eq!(
            follower.after(Outcome::Won(4), sent, now, TTL),
            leader(4, sent)
        );
        // A renewal keeps the term and moves the start of the lease.
        assert_eq!(
            leader(4, t0).after(Outcome::Won(4), sent, now, TTL),
            leader(4, sent)
        );
    }

    #[test]
    fn a_lost_campaign_follows_whoever_leads() {
        let t0 = Instant::now();
        let elsewhere = Some("https://b:8750".to_owned());
        assert_eq!(
            leader(4, t0).after(Outcome::Lost(elsewhere.clone()), t0, t0, TTL),
            Role::Follower {
                leader: elsewhere.clone()
            }
        );
        assert_eq!(
            Role::Follower { leader: None }.after(Outcome::Lost(elsewhere.clone()), t0, t0, TTL),
            Role::Follower { leader: elsewhere }
        );
    }

    #[test]
    fn a_leader_without_answers_steps_down_when_its_lease_may_have_run_out() {
        let t0 = Instant::now();
        let role = leader(4, t0);
        let early = t0 + TTL - Duration::from_millis(1);
        assert_eq!(role.after(Outcome::Failed, early, early, TTL), role);
        let late = t0 + TTL;
        assert_eq!(
            role.after(Outcome::Failed, late, late, TTL),
            Role::Follower { leader: None }
        );
        // A follower without answers keeps naming the leader it knew.
        let follower = Role::Follower {
            leader: Some("https://b:8750".to_owned()),
        };
        assert_eq!(follower.after(Outcome::Failed, late, late, TTL), follower);
    }

    #[test]
    fn a_leaders_campaign_may_take_until_its_lease_runs_out() {
        let t0 = Instant::now();
        let third = TTL / 3;
        let follower = Role::Follower { leader: None };
        assert_eq!(follower.campaign_timeout(t0, TTL), third);
        // Renewed at t0 and campaigning again a third later: two thirds remain.
        assert_eq!(leader(4, t0).campaign_timeout(t0 + third, TTL), TTL - third);
        // Never less than a third, even with the lease nearly out.
        assert_eq!(leader(4, t0).campaign_timeout(t0 + TTL, TTL), third);
    }

    #[test]
    fn holds_only_while_the_lease_counted_locally_runs() {
        let leadership = Leadership::follower(Duration::from_millis(50));
        assert_eq!(leadership.holds(), None);
        leadership.set(leader(2, Instant::now()));
        assert_eq!(leadership.holds(), Some(2));
        assert_eq!(leadership.leader_url(), None);
        std::thread::sleep(Duration::from_millis(60));
        // Not renewed in time: the role still says leader, but it may not act as one.
        assert_eq!(leadership.role().term(), Some(2));
        assert_eq!(leadership.holds(), None);
    }

    #[test]
    fn subscribers_wake_on_a_new_role_or_term_not_on_renewals() {
        let leadership = Leadership::follower(TTL);
        let mut changes = leadership.subscribe();
        changes.mark_unchanged();
        leadership.set(leader(1, Instant::now()));
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();
        leadership.set(leader(1, Instant::now()));
        assert!(!changes.has_changed().expect("open"));
        leadership.set(leader(2, Instant::now()));
        assert!(changes.has_changed().expect("open"));
        changes.mark_unchanged();
        leadership.set(Role::Follower {
            leader: Some("https://b:8750".to_owned()),
        });
        assert!(changes.has_changed().expect("open"));
    }
}
