//! The link moving between scheduler replicas, against two real tonic servers on sockets:
//! a follower refuses the link naming the leader, the agent links there and says `Hello`
//! with the dynos it runs; when the leader goes, the other replica takes over, gets the same
//! `Hello`, and no dyno is stopped or started again. An attach relay, too, goes to the
//! leader a follower names.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use manifold_endpoints::{Endpoints, LEADER_HEADER};
use manifold_proto::agent_link_server::{AgentLink, AgentLinkServer};
use tokio_stream::wrappers::ReceiverStream;

use super::*;

type Outbound = mpsc::Sender<Result<proto::SchedulerMessage, tonic::Status>>;

/// What a replica heard: its name, the `Hello`, and the stream's sender back to the agent.
type Linked = (&'static str, proto::Hello, Outbound);

/// One scheduler replica: it leads, or refuses as a follower naming `leader`.
#[derive(Clone)]
struct Replica {
    name: &'static str,
    leads: Arc<AtomicBool>,
    leader: Arc<Mutex<String>>,
    linked: mpsc::UnboundedSender<Linked>,
    /// The replica's name and the dyno of each attach stream it took.
    attached: mpsc::UnboundedSender<(&'static str, String)>,
}

impl Replica {
    fn new(
        name: &'static str,
        leads: bool,
        linked: &mpsc::UnboundedSender<Linked>,
        attached: &mpsc::UnboundedSender<(&'static str, String)>,
    ) -> Replica {
        Replica {
            name,
            leads: Arc::new(AtomicBool::new(leads)),
            leader: Arc::new(Mutex::new(String::new())),
            linked: linked.clone(),
            attached: attached.clone(),
        }
    }
}

#[tonic::async_trait]
impl AgentLink for Replica {
    type LinkStream = ReceiverStream<Result<proto::SchedulerMessage, tonic::Status>>;
    type AttachStream = ReceiverStream<Result<proto::AttachPacket, tonic::Status>>;

    async fn attach(
        &self,
        request: tonic::Request<tonic::Streaming<proto::AttachPacket>>,
    ) -> Result<tonic::Response<Self::AttachStream>, tonic::Status> {
        if !self.leads.load(Ordering::SeqCst) {
            return Err(not_leader(&self.leader.lock().expect("lock")));
        }
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| tonic::Status::invalid_argument("no first packet"))?;
        let _ = self.attached.send((self.name, first.dyno_id));
        let (tx, rx) = mpsc::channel(1);
        // Holds the stream open while the agent's side does.
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {}
            drop(tx);
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn link(
        &self,
        request: tonic::Request<tonic::Streaming<proto::AgentMessage>>,
    ) -> Result<tonic::Response<Self::LinkStream>, tonic::Status> {
        if !self.leads.load(Ordering::SeqCst) {
            return Err(not_leader(&self.leader.lock().expect("lock")));
        }
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await?.and_then(|m| m.kind) {
            Some(proto::agent_message::Kind::Hello(hello)) => hello,
            other => return Err(tonic::Status::invalid_argument(format!("{other:?}"))),
        };
        let (tx, rx) = mpsc::channel(16);
        let _ = self.linked.send((self.name, hello, tx));
        // Keeps reading, as a scheduler does, until the agent goes.
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// A follower's refusal, as the contract says: `unavailable` naming the leader.
fn not_leader(leader: &str) -> tonic::Status {
    let mut status = tonic::Status::unavailable("this scheduler is not the leader");
    status
        .metadata_mut()
        .insert(LEADER_HEADER, leader.parse().expect("metadata"));
    status
}

/// Serves `replica` on 127.0.0.1:0 until the test ends; returns its URL.
async fn serve(replica: Replica) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let routes = tonic::service::Routes::new(AgentLinkServer::new(replica)).into_axum_router();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, routes).await;
    });
    (url, task)
}

/// Runs the core with the real link until a replica has a `Hello` and the agent counts it
/// as the leader (30 s at most).
async fn until_linked(
    h: &mut Harness,
    link: &mut mpsc::UnboundedReceiver<LinkEvent>,
    linked: &mut mpsc::UnboundedReceiver<Linked>,
    endpoints: &Endpoints,
    url: &str,
) -> Linked {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut got = None;
    loop {
        if got.is_none() {
            got = linked.try_recv().ok();
        }
        if let Some(got) = got.take_if(|_| endpoints.leader() == url) {
            return got;
        }
        tokio::select! {
            Some(event) = link.recv() => h.core.link_event(event),
            Some(message) = h.messages.recv() => h.core.input(message),
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
            () = tokio::time::sleep_until(deadline) => panic!("not linked to {url} in 30 s: {got:?}"),
        }
    }
}

#[tokio::test]
async fn the_link_follows_the_leader_and_hello_keeps_the_dynos_running() {
    let mut h = Harness::linked();
    h.assign(&[("d1", "worker.1")]);
    h.until("up", |h| h.last("d1").is_some_and(|s| s.state() == S::Up))
        .await;
    h.core.link_event(LinkEvent::Disconnected);

    let (linked_tx, mut linked) = mpsc::unbounded_channel();
    let (attached, _) = mpsc::unbounded_channel();
    let a = Replica::new("a", false, &linked_tx, &attached);
    let b = Replica::new("b", true, &linked_tx, &attached);
    let (a_url, _a_task) = serve(a.clone()).await;
    let (b_url, _b_task) = serve(b.clone()).await;
    *a.leader.lock().expect("lock") = b_url.clone();
    *b.leader.lock().expect("lock") = a_url.clone();

    // The follower comes first in the list: it names b, and the agent links there.
    let endpoints = Endpoints::parse(&format!("{a_url},{b_url}")).expect("urls");
    let scheduler = Scheduler::new(endpoints.clone(), None);
    let (link_tx, mut link) = mpsc::unbounded_channel();
    let link_task = tokio::spawn(link::run(scheduler, link_tx));
    let (name, hello, to_agent) =
        until_linked(&mut h, &mut link, &mut linked, &endpoints, &b_url).await;
    // (`until_linked` also saw b become what blobs go to: `Endpoints::leader`.)
    assert_eq!(name, "b");
    let [status] = &hello.dynos[..] else {
        panic!("{:?}", hello.dynos);
    };
    assert_eq!((status.id.as_str(), status.state()), ("d1", S::Up));

    // b, the leader of a newer term, re-establishes the same assignments: nothing changes
    // on this host.
    let generation = h.generation;
    let term = h.term + 1;
    to_agent
        .send(Ok(proto::SchedulerMessage {
            kind: Some(proto::scheduler_message::Kind::Assignments(
                proto::Assignments {
                    generation,
                    dynos: vec![assignment("d1", "worker.1")],
                    term,
                    ..Default::default()
                },
            )),
        }))
        .await
        .expect("send");

    // b loses the lead to a and ends the stream: the agent links to a, with the same Hello.
    a.leads.store(true, Ordering::SeqCst);
    b.leads.store(false, Ordering::SeqCst);
    to_agent.send(Err(not_leader(&a_url))).await.expect("send");
    let (name, hello, _to_agent) =
        until_linked(&mut h, &mut link, &mut linked, &endpoints, &a_url).await;
    assert_eq!(name, "a");
    assert_eq!(hello.generation, generation);
    let ids: Vec<_> = hello
        .dynos
        .iter()
        .map(|s| (s.id.as_str(), s.state()))
        .collect();
    assert_eq!(ids, [("d1", S::Up)]);

    let calls = h.calls();
    assert!(
        matches!(&calls[..], [Call::Start { .. }]),
        "started once, never stopped: {calls:?}"
    );
    assert_eq!(h.states("d1"), [(S::Starting, None), (S::Up, None)]);
    assert_eq!(h.core.state.term, term, "b's set was applied");
    link_task.abort();
}

#[tokio::test]
async fn an_attach_relay_goes_to_the_leader_a_follower_names() {
    let state = tempfile::tempdir().expect("tempdir");
    let dyno = DynoDir {
        root: state.path().join("d1-0000abcd"),
    };
    std::fs::create_dir_all(&dyno.root).expect("mkdir");
    // The shim's side of the socket (its directory is new: the relay counts it as starting).
    let shim = tokio::net::UnixListener::bind(dyno.attach_socket()).expect("bind");

    let (linked, _) = mpsc::unbounded_channel();
    let (attached_tx, mut attached) = mpsc::unbounded_channel();
    let a = Replica::new("a", false, &linked, &attached_tx);
    let b = Replica::new("b", true, &linked, &attached_tx);
    let (a_url, _a_task) = serve(a.clone()).await;
    let (b_url, _b_task) = serve(b).await;
    *a.leader.lock().expect("lock") = b_url;

    let endpoints = Endpoints::parse(&a_url).expect("url");
    let relay = tokio::spawn(crate::daemon::relay::run(
        Scheduler::new(endpoints, None),
        "d1".into(),
        dyno,
    ));
    let patience = Duration::from_secs(30);
    let _socket = tokio::time::timeout(patience, shim.accept())
        .await
        .expect("the relay connects to the shim")
        .expect("accept");
    let got = tokio::time::timeout(patience, attached.recv())
        .await
        .expect("an attach stream within 30 s");
    assert_eq!(got, Some(("b", "d1".to_string())), "at the leader a named");
    relay.abort();
}
