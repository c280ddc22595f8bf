//! The daemon's side of the local planes: one thread with one epoll set
//! over every node's control socket. It wires nodes to each other (creates
//! one socket pair per producer/consumer pair and hands each end over, also
//! again when a node restarts), ticks timers, and delivers `InputClosed` and
//! `Stop`, and reads what nodes count (`NodeMsg::Counts`, added up in
//! `tally.rs`). Data does not pass through it: producers write straight to
//! their consumers, one hop. It never blocks on a node: sends are
//! non-blocking and what does not fit waits in that node's bounded queue.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rill_proto::coord::NodeCounts;
use rill_proto::{BoundedQueue, DaemonMsg, Direction, Metadata, NodeMsg, Pushed, Route, transport};
use rustix::event::epoll;
use rustix::io::Errno;

use crate::routes::Routes;

/// A running node process, unique for the daemon's lifetime (a restarted
/// node gets a new one).
pub type Instance = u64;

/// Epoll key of the wake-up eventfd (instances start at 1).
const WAKE: u64 = 0;

/// Instructions from the supervisor.
#[derive(Debug)]
pub enum Command {
    /// A node process started with this end of its control socket pair.
    Attach { node: String, instance: Instance, socket: OwnedFd },
    /// `node` finished for good: its receivers get `InputClosed`.
    CloseOutputs { node: String },
    /// Send `Stop` to one node, or to all.
    Stop { node: Option<String> },
    /// Every machine is wired: nodes may start (see [`RouterHandle::start`]).
    Go,
    /// The daemon shuts down: nodes that end now are lost, not ended, for
    /// consumers on other machines (no `InputClosed` goes to them).
    Leaving,
    /// Wire tap `tap` to `node`'s outputs `routes` (see `tap.rs`): now if it
    /// runs, and again each time it starts; the reader's ends arrive on `ends`.
    Tap { tap: u64, node: String, routes: Vec<Route>, every_us: u64, ends: crate::tap::TapEnds },
    /// Unwire tap `tap` from every node.
    Untap { tap: u64 },
    /// End the router thread.
    Shutdown,
}

/// An edge whose other node runs on another machine: the local node got
/// one end, this is the other, for the cross-machine bridge.
#[derive(Debug)]
pub struct RemoteEnd {
    pub producer: String,
    pub consumer: String,
    pub routes: Vec<Route>,
    /// True if the producer is the local node (data leaves this machine).
    pub outbound: bool,
    pub fd: OwnedFd,
}

/// What the router tells the cross-machine bridge.
#[derive(Debug)]
pub enum Remote {
    /// A new edge end to serve.
    End(RemoteEnd),
    /// Local `producer` ended for good: remote `consumer` gets
    /// `InputClosed`, behind everything it sent.
    Closed { producer: String, consumer: String },
}

/// Where edges to nodes on other machines go.
pub struct RemotePeers {
    /// Nodes of the dataflow that run elsewhere.
    pub nodes: HashSet<String>,
    pub ends: Sender<Remote>,
}

/// Where the router sends a node's message counters (its total over its
/// runs) when they change: about once a second per node.
pub type CountsSink = Arc<dyn Fn(&str, &rill_proto::coord::NodeCounts) + Send + Sync>;

/// Figures the router reports when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct RouterStats {
    /// Timer ticks delivered.
    pub ticks: u64,
    /// Timer ticks dropped because a node's queue was full.
    pub dropped: u64,
    /// Data connections set up.
    pub edges: u64,
}

/// Handle to the router thread.
pub struct RouterHandle {
    tx: Sender<Command>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<RouterStats>>,
}

impl RouterHandle {
    /// Starts the router thread for `routes`; `remote` says which nodes run
    /// elsewhere and takes the far ends of their edges.
    /// With `remote`, nodes are told to start only after [`Command::Go`]
    /// (the coordinator sends it once every machine has wired its edges).
    /// `printers` sends what nodes print on their printed outputs.
    pub fn start(
        routes: Routes,
        remote: Option<RemotePeers>,
        counts: CountsSink,
        printers: Arc<crate::printed::Printers>,
    ) -> std::io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let wake = Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?);
        epoll::add(&epoll, &*wake, epoll::EventData::new_u64(WAKE), epoll::EventFlags::IN)?;
        let (tx, rx) = channel();
        let now = Instant::now();
        let timers = routes
            .timers
            .iter()
            .map(|(interval, targets)| Timer { interval: *interval, next: now + *interval, targets: targets.clone() })
            .collect();
        let mut router = Router {
            epoll,
            wake: wake.clone(),
            rx,
            edge_routes: routes.edges(),
            routes,
            conns: HashMap::new(),
            by_node: HashMap::new(),
            finished: HashSet::new(),
            stored_ends: HashMap::new(),
            gone: remote.is_none(),
            remote,
            leaving: false,
            timers,
            stats: RouterStats::default(),
            tally: crate::tally::Tally::default(),
            counts,
            taps: HashMap::new(),
            printers,
        };
        router.wire_printers();
        let thread = std::thread::Builder::new().name("rill-router".into()).spawn(move || router.run())?;
        Ok(Self { tx, wake, thread: Some(thread) })
    }

    /// Queues a command and wakes the router.
    pub fn send(&self, command: Command) {
        if self.tx.send(command).is_ok() {
            let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        }
    }

    /// Stops the thread and returns its figures.
    pub fn shutdown(mut self) -> RouterStats {
        self.send(Command::Shutdown);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for RouterHandle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.send(Command::Shutdown);
            let _ = thread.join();
        }
    }
}

struct Timer {
    interval: Duration,
    next: Instant,
    targets: Vec<(String, String)>,
}

/// A control message and the fd it carries, if any.
struct Outgoing {
    msg: DaemonMsg,
    fd: Option<OwnedFd>,
}

/// One connected node process.
struct Conn {
    node: String,
    fd: OwnedFd,
    /// Messages the socket had no room for; ticks are bounded per input.
    backlog: BoundedQueue<String, Outgoing>,
    want_write: bool,
}

struct Router {
    epoll: OwnedFd,
    wake: Arc<OwnedFd>,
    rx: Receiver<Command>,
    routes: Routes,
    /// `(producer, consumer)` -> what their edge carries.
    edge_routes: BTreeMap<(String, String), Vec<Route>>,
    conns: HashMap<Instance, Conn>,
    by_node: HashMap<String, Instance>,
    /// Nodes that finished for good (their outputs are closed).
    finished: HashSet<String>,
    /// Edge ends made for nodes that were not running yet:
    /// `(producer, consumer, holder)` -> the holder's end.
    stored_ends: HashMap<(String, String, String), OwnedFd>,
    remote: Option<RemotePeers>,
    /// The daemon shuts down (see [`Command::Leaving`]).
    leaving: bool,
    /// Nodes may start (always, for a dataflow that runs only here).
    gone: bool,
    timers: Vec<Timer>,
    stats: RouterStats,
    tally: crate::tally::Tally,
    counts: CountsSink,
    /// `(tap, node)` -> what it reads and where its ends go.
    taps: HashMap<(u64, String), (Vec<Route>, u64, crate::tap::TapEnds)>,
    /// Producers of what local nodes print: always there, written by the
    /// threads that read the nodes' output (see `printed.rs`).
    printers: Arc<crate::printed::Printers>,
}

enum Flow {
    Continue,
    Shutdown,
}

impl Router {
    fn run(mut self) -> RouterStats {
        let mut events = Vec::with_capacity(64);
        let mut buf = vec![0u8; rill_proto::MAX_PACKET];
        loop {
            let timeout = self
                .timers
                .iter()
                .map(|t| t.next)
                .min()
                .map(|next| transport::timespec(next.saturating_duration_since(Instant::now())));
            events.clear();
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => {
                    eprintln!("rill: router epoll failed: {e}");
                    break;
                }
            }
            for event in events.iter().copied() {
                let (key, flags) = (event.data.u64(), event.flags);
                if key == WAKE {
                    let mut b = [0u8; 8];
                    let _ = rustix::io::read(&*self.wake, &mut b);
                    if let Flow::Shutdown = self.commands() {
                        // What nodes said last (their final counts) is
                        // still in their sockets.
                        let instances: Vec<Instance> = self.conns.keys().copied().collect();
                        for instance in instances {
                            self.read(instance, &mut buf);
                        }
                        for (node, total) in self.tally.due(Instant::now(), true) {
                            (self.counts)(&node, &total);
                        }
                        return self.stats;
                    }
                    continue;
                }
                if flags.contains(epoll::EventFlags::OUT) {
                    self.flush(key);
                }
                if flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR) {
                    self.read(key, &mut buf);
                }
            }
            self.fire_timers();
        }
        self.stats
    }

    fn commands(&mut self) -> Flow {
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Attach { node, instance, socket } => self.attach(node, instance, socket),
                Command::CloseOutputs { node } => {
                    let targets: Vec<_> = self.routes.fed_by(&node).cloned().collect();
                    // What a node printed is closed in band, behind the last line.
                    let in_band = self.printers.produces(&node);
                    let mut remote_consumers = HashSet::new();
                    for (receiver, input) in targets {
                        match self.remote.as_ref().filter(|r| r.nodes.contains(&receiver)) {
                            Some(_) => {
                                remote_consumers.insert(receiver);
                            }
                            None if in_band => {}
                            None => self.send_to_node(&receiver, None, DaemonMsg::InputClosed { input }, None),
                        }
                    }
                    // A daemon shutting down: its nodes are lost, not ended.
                    if let Some(remote) = self.remote.as_ref().filter(|_| !self.leaving) {
                        for consumer in remote_consumers {
                            let _ = remote.ends.send(Remote::Closed { producer: node.clone(), consumer });
                        }
                    }
                    // Ends kept for it will never be picked up.
                    self.stored_ends.retain(|(_, _, holder), _| holder != &node);
                    self.finished.insert(node);
                }
                Command::Stop { node: Some(node) } => self.send_to_node(&node, None, DaemonMsg::Stop, None),
                Command::Stop { node: None } => {
                    let nodes: Vec<String> = self.by_node.keys().cloned().collect();
                    for node in nodes {
                        self.send_to_node(&node, None, DaemonMsg::Stop, None);
                    }
                }
                // A repeated Go (e.g. after a coordinator restart) starts nothing twice.
                Command::Go if self.gone => {}
                Command::Go => {
                    self.gone = true;
                    let nodes: Vec<String> = self.by_node.keys().cloned().collect();
                    for node in nodes {
                        self.send_to_node(&node, None, DaemonMsg::Start, None);
                    }
                }
                Command::Leaving => self.leaving = true,
                Command::Tap { tap, node, routes, every_us, ends } => {
                    self.taps.insert((tap, node.clone()), (routes, every_us, ends));
                    if self.by_node.contains_key(&node) {
                        self.wire_tap(tap, &node);
                    }
                }
                Command::Untap { tap } => {
                    let nodes: Vec<String> =
                        self.taps.keys().filter(|(t, _)| *t == tap).map(|(_, n)| n.clone()).collect();
                    for node in nodes {
                        self.taps.remove(&(tap, node.clone()));
                        let peer = rill_proto::tap::tap_peer(tap);
                        self.send_to_node(&node, None, DaemonMsg::Unwire { peer }, None);
                    }
                }
                Command::Shutdown => return Flow::Shutdown,
            }
        }
        Flow::Continue
    }

    /// Registers the node's control socket, wires its edges, tells it which
    /// inputs are closed already, and lets it start.
    fn attach(&mut self, node: String, instance: Instance, socket: OwnedFd) {
        if let Err(e) = epoll::add(&self.epoll, &socket, epoll::EventData::new_u64(instance), epoll::EventFlags::IN) {
            eprintln!("rill: cannot watch node {node}: {e}");
            return;
        }
        if let Some(old) = self.by_node.insert(node.clone(), instance) {
            // Its last words (final counts) first.
            let mut buf = vec![0u8; rill_proto::MAX_PACKET];
            self.read(old, &mut buf);
            self.disconnect(old);
            self.by_node.insert(node.clone(), instance);
        }
        self.conns.insert(
            instance,
            Conn { node: node.clone(), fd: socket, backlog: BoundedQueue::default(), want_write: false },
        );
        let edges: Vec<((String, String), Vec<Route>)> = self
            .edge_routes
            .iter()
            .filter(|((p, c), _)| *p == node || *c == node)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((producer, consumer), routes) in edges {
            self.wire(&node, &producer, &consumer, &routes);
        }
        let taps: Vec<u64> = self.taps.keys().filter(|(_, n)| *n == node).map(|(t, _)| *t).collect();
        for tap in taps {
            self.wire_tap(tap, &node);
        }
        let closed: Vec<String> = self
            .routes
            .upstream
            .get(&node)
            .into_iter()
            .flatten()
            .filter(|(source, _)| self.finished.contains(source) && !self.printers.produces(source))
            .map(|(_, input)| input.clone())
            .collect();
        for input in closed {
            self.send_to_node(&node, None, DaemonMsg::InputClosed { input }, None);
        }
        if self.gone {
            self.send_to_node(&node, None, DaemonMsg::Start, None);
        }
    }

    /// Gives `node` its end of the producer->consumer edge: one kept for it,
    /// or a new pair whose other end goes to the peer now (running) or later.
    fn wire(&mut self, node: &str, producer: &str, consumer: &str, routes: &[Route]) {
        let edge_msg = |holder: &str| {
            let (direction, peer) =
                if holder == producer { (Direction::Out, consumer) } else { (Direction::In, producer) };
            DaemonMsg::Edge { direction, peer: peer.to_owned(), routes: routes.to_vec() }
        };
        let key = (producer.to_owned(), consumer.to_owned(), node.to_owned());
        if producer != consumer
            && let Some(end) = self.stored_ends.remove(&key)
        {
            self.send_to_node(node, None, edge_msg(node), Some(end));
            return;
        }
        let (producer_end, consumer_end) = match transport::socket_pair() {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("rill: cannot connect {producer} to {consumer}: {e}");
                return;
            }
        };
        self.stats.edges += 1;
        let peer = if node == producer { consumer } else { producer };
        let (mine, theirs) = if node == producer { (producer_end, consumer_end) } else { (consumer_end, producer_end) };
        self.hand(node, edge_msg(node), mine);
        if peer == node {
            // A node that feeds itself holds both ends.
            let msg = DaemonMsg::Edge { direction: Direction::In, peer: node.to_owned(), routes: routes.to_vec() };
            self.send_to_node(node, None, msg, Some(theirs));
        } else if let Some(remote) = self.remote.as_ref().filter(|r| r.nodes.contains(peer)) {
            let end = RemoteEnd {
                producer: producer.to_owned(),
                consumer: consumer.to_owned(),
                routes: routes.to_vec(),
                outbound: node == producer,
                fd: theirs,
            };
            let _ = remote.ends.send(Remote::End(end));
        } else if self.printers.produces(peer) {
            self.hand(peer, edge_msg(peer), theirs);
        } else if self.by_node.contains_key(peer) {
            self.send_to_node(peer, None, edge_msg(peer), Some(theirs));
        } else if !self.finished.contains(peer) {
            self.stored_ends.insert((producer.to_owned(), consumer.to_owned(), peer.to_owned()), theirs);
        }
    }

    /// Gives `holder` its end of an edge: a node through its control
    /// socket, a printed-output producer straight to its writer.
    fn hand(&mut self, holder: &str, msg: DaemonMsg, end: OwnedFd) {
        match msg {
            DaemonMsg::Edge { peer, routes, .. } if self.printers.produces(holder) => {
                let remote = self.remote.as_ref().is_some_and(|r| r.nodes.contains(&peer));
                self.printers.attach(holder, &peer, routes, end, remote);
            }
            msg => self.send_to_node(holder, None, msg, Some(end)),
        }
    }

    /// Wires the producers of what local nodes print to their consumers:
    /// they exist from the start (a consumer not running yet gets its end
    /// when it starts).
    fn wire_printers(&mut self) {
        let edges: Vec<((String, String), Vec<Route>)> = self
            .edge_routes
            .iter()
            .filter(|((producer, _), _)| self.printers.produces(producer))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((producer, consumer), routes) in edges {
            self.wire(&producer, &producer, &consumer, &routes);
        }
    }

    /// Gives running `node` a new edge to tap `tap`'s reader.
    fn wire_tap(&mut self, tap: u64, node: &str) {
        let Some((routes, every_us, ends)) = self.taps.get(&(tap, node.to_owned())) else { return };
        let (routes, every_us, ends) = (routes.clone(), *every_us, ends.clone());
        let (producer_end, reader_end) = match transport::socket_pair() {
            Ok(pair) => pair,
            Err(e) => return eprintln!("rill: cannot tap {node}: {e}"),
        };
        if !ends.send(node, reader_end) {
            // The reader is gone: the tap ended.
            self.taps.remove(&(tap, node.to_owned()));
            return;
        }
        let msg = DaemonMsg::Tap { peer: rill_proto::tap::tap_peer(tap), routes, every_us };
        self.send_to_node(node, None, msg, Some(producer_end));
    }

    fn disconnect(&mut self, instance: Instance) {
        let Some(conn) = self.conns.remove(&instance) else { return };
        let _ = epoll::delete(&self.epoll, &conn.fd);
        if self.by_node.get(&conn.node) == Some(&instance) {
            self.by_node.remove(&conn.node);
        }
    }

    /// Nodes send their counts on the control socket; reading also
    /// notices the end.
    fn read(&mut self, instance: Instance, buf: &mut [u8]) {
        loop {
            let Some(conn) = self.conns.get(&instance) else { return };
            match transport::recv_packet(conn.fd.as_fd(), buf, true) {
                Ok((0, _)) => return self.disconnect(instance),
                Ok((n, _)) => match NodeMsg::decode(&buf[..n]) {
                    Ok(NodeMsg::Counts(counts)) => {
                        let node = conn.node.clone();
                        let routes = &self.routes;
                        let input = |node: &str, input: &str| {
                            routes.queue_size.contains_key(&(node.to_owned(), input.to_owned()))
                        };
                        let output = |node: &str, output: &str| {
                            routes.outputs.get(node).is_some_and(|o| o.iter().any(|x| x == output))
                        };
                        let total = self.tally.report(&node, instance, NodeCounts::from_wire(&counts), input, output);
                        (self.counts)(&node, &total);
                    }
                    Err(e) => eprintln!("rill: undecodable message from node {}: {e}", conn.node),
                },
                Err(Errno::WOULDBLOCK) => return,
                Err(Errno::CONNRESET) => return self.disconnect(instance),
                Err(e) => {
                    eprintln!("rill: lost the control connection to node {}: {e}", conn.node);
                    return self.disconnect(instance);
                }
            }
        }
    }

    /// Sends now if the socket has room and nothing waits before it,
    /// otherwise queues (a tick of a full input drops that input's oldest).
    fn send_to_node(&mut self, node: &str, input: Option<String>, msg: DaemonMsg, fd: Option<OwnedFd>) {
        let Some(instance) = self.by_node.get(node).copied() else { return };
        let Some(conn) = self.conns.get_mut(&instance) else { return };
        let out = Outgoing { msg, fd };
        let out = if conn.backlog.is_empty() {
            match write(conn, out) {
                Ok(()) => return,
                Err((Errno::WOULDBLOCK, out)) => out,
                Err(_) => return,
            }
        } else {
            out
        };
        let capacity = input.as_ref().and_then(|i| self.routes.queue_size.get(&(node.to_owned(), i.clone()))).copied();
        let pushed = match out.msg {
            DaemonMsg::Stop => {
                conn.backlog.push_urgent(out);
                Pushed::Kept
            }
            DaemonMsg::Tick { .. } => conn.backlog.push(input, capacity.unwrap_or(1), out),
            _ => conn.backlog.push(None, 0, out),
        };
        if let Pushed::DroppedOldest(Outgoing { msg: DaemonMsg::Tick { input, .. }, .. }) = &pushed {
            self.stats.dropped += 1;
            self.tally.tick_dropped(node, input);
        }
        self.want_write(instance, true);
    }

    fn flush(&mut self, instance: Instance) {
        loop {
            let Some(conn) = self.conns.get_mut(&instance) else { return };
            let Some((key, out)) = conn.backlog.pop() else {
                return self.want_write(instance, false);
            };
            match write(conn, out) {
                Ok(()) => {}
                Err((Errno::WOULDBLOCK, out)) => {
                    conn.backlog.push_front(key, out);
                    return;
                }
                Err(_) => {}
            }
        }
    }

    /// Arms or disarms EPOLLOUT for the node's socket.
    fn want_write(&mut self, instance: Instance, want: bool) {
        let Some(conn) = self.conns.get_mut(&instance) else { return };
        if conn.want_write == want {
            return;
        }
        conn.want_write = want;
        let mut flags = epoll::EventFlags::IN;
        if want {
            flags |= epoll::EventFlags::OUT;
        }
        let _ = epoll::modify(&self.epoll, &conn.fd, epoll::EventData::new_u64(instance), flags);
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        for (node, total) in self.tally.due(now, false) {
            (self.counts)(&node, &total);
        }
        let mut due = Vec::new();
        for timer in &mut self.timers {
            if timer.next <= now {
                due.extend(timer.targets.iter().cloned());
                // Skip missed ticks instead of bursting to catch up.
                while timer.next <= now {
                    timer.next += timer.interval;
                }
            }
        }
        if due.is_empty() {
            return;
        }
        let metadata = Metadata { timestamp_ns: rill_proto::now_ns() };
        for (node, input) in due {
            self.stats.ticks += 1;
            self.send_to_node(&node, Some(input.clone()), DaemonMsg::Tick { input, metadata }, None);
        }
    }
}

/// Encodes and sends one message without blocking; gives it back on failure.
fn write(conn: &Conn, out: Outgoing) -> Result<(), (Errno, Outgoing)> {
    let mut bytes = Vec::with_capacity(64);
    out.msg.encode(&mut bytes);
    let result = match &out.fd {
        Some(fd) => transport::send_packet(conn.fd.as_fd(), &bytes, &[fd.as_fd()], true),
        None => transport::send_packet(conn.fd.as_fd(), &bytes, &[], true),
    };
    result.map_err(|e| (e, out))
}
