//! The local data plane: one thread with one epoll set over every node's
//! socket. It routes messages between nodes, ticks timers, applies the
//! per-input queue bound when a node does not drain its socket, and keeps the
//! shared-memory book. It never blocks on a node: sends are non-blocking and
//! what does not fit waits in that node's bounded queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rill_proto::{BoundedQueue, DaemonMsg, Metadata, NodeMsg, Payload, Pushed, transport};
use rustix::event::epoll;
use rustix::io::Errno;

use crate::routes::Routes;
use crate::shm_table::{Instance, ShmAction, ShmTable};

/// Inputs the router writes to a node's socket before the node acknowledges
/// them. Beyond it, inputs wait in the router's drop-oldest queue: the
/// per-input bound holds, and shared regions in flight stay bounded.
pub const INPUT_WINDOW: u32 = rill_proto::INPUT_WINDOW;

/// Epoll key of the wake-up eventfd (instances start at 1).
const WAKE: u64 = 0;
/// After routing a message the router polls without sleeping this long:
/// a reply that comes back within it is routed without a wake-up, which on
/// virtual machines costs tens of microseconds. Idle routers sleep.
const SPIN: Duration = Duration::from_micros(50);

/// `RILL_ROUTER_SPIN_US` trades CPU for latency (0 = never spin).
fn spin() -> Duration {
    std::env::var("RILL_ROUTER_SPIN_US").ok().and_then(|v| v.parse().ok()).map(Duration::from_micros).unwrap_or(SPIN)
}

/// Instructions from the supervisor.
#[derive(Debug)]
pub enum Command {
    /// A node process started with this end of its socket pair.
    Attach { node: String, instance: Instance, socket: OwnedFd },
    /// `node` finished for good: its receivers get `InputClosed`.
    CloseOutputs { node: String },
    /// Send `Stop` to one node, or to all.
    Stop { node: Option<String> },
    /// End the router thread.
    Shutdown,
}

/// Figures the router reports when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct RouterStats {
    pub routed: u64,
    pub dropped: u64,
    pub regions_left: usize,
}

/// Handle to the router thread.
pub struct RouterHandle {
    tx: Sender<Command>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<RouterStats>>,
}

impl RouterHandle {
    /// Starts the router thread for `routes`.
    pub fn start(routes: Routes) -> std::io::Result<Self> {
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
        let router = Router {
            epoll,
            wake: wake.clone(),
            rx,
            routes,
            conns: HashMap::new(),
            by_node: HashMap::new(),
            finished: HashSet::new(),
            pending: HashMap::new(),
            shm: ShmTable::default(),
            packet: Vec::with_capacity(BATCH_BYTES + 8 * 1024),
            timers,
            stats: RouterStats::default(),
        };
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

/// One connected node process.
struct Conn {
    node: String,
    fd: OwnedFd,
    /// Stop, Reclaim, Unmap: never dropped, not limited by the window.
    control: VecDeque<DaemonMsg>,
    /// Inputs (bounded per input, oldest dropped) and InputClosed, in order.
    inputs: BoundedQueue<String, DaemonMsg>,
    /// Inputs written to the socket that the node has not acknowledged.
    in_flight: u32,
    /// EPOLLOUT is armed (the socket was full).
    want_write: bool,
}

impl Conn {
    fn new(node: String, fd: OwnedFd) -> Self {
        Self { node, fd, control: VecDeque::new(), inputs: BoundedQueue::default(), in_flight: 0, want_write: false }
    }
}

struct Router {
    epoll: OwnedFd,
    wake: Arc<OwnedFd>,
    rx: Receiver<Command>,
    routes: Routes,
    conns: HashMap<Instance, Conn>,
    by_node: HashMap<String, Instance>,
    /// Nodes that finished for good (their outputs are closed).
    finished: HashSet<String>,
    /// Messages for nodes not attached yet (starting or restarting): a
    /// producer that starts first loses nothing.
    pending: HashMap<String, BoundedQueue<String, DaemonMsg>>,
    shm: ShmTable,
    /// Reused buffer for outgoing packets.
    packet: Vec<u8>,
    timers: Vec<Timer>,
    stats: RouterStats,
}

enum Flow {
    Continue,
    Shutdown,
}

impl Router {
    fn run(mut self) -> RouterStats {
        let mut events = Vec::with_capacity(64);
        let mut buf = vec![0u8; rill_proto::MAX_PACKET];
        let spin = spin();
        let mut last_routed = Instant::now() - spin;
        loop {
            let timeout = if last_routed.elapsed() < spin {
                Some(rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 })
            } else {
                self.timers.iter().map(|t| t.next).min().map(|next| {
                    let d = next.saturating_duration_since(Instant::now());
                    rustix::time::Timespec { tv_sec: d.as_secs() as i64, tv_nsec: i64::from(d.subsec_nanos()) }
                })
            };
            let routed_before = self.stats.routed;
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
                    if let Flow::Shutdown = self.commands(&mut buf) {
                        return self.finish();
                    }
                    continue;
                }
                if flags.contains(epoll::EventFlags::OUT) {
                    self.flush(key);
                }
                if flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR) {
                    self.read_all(key, &mut buf);
                }
            }
            self.fire_timers();
            if self.stats.routed != routed_before {
                last_routed = Instant::now();
            }
        }
        self.finish()
    }

    fn finish(mut self) -> RouterStats {
        let instances: Vec<Instance> = self.conns.keys().copied().collect();
        for instance in instances {
            self.disconnect(instance);
        }
        self.stats.regions_left = self.shm.region_count();
        self.stats
    }

    fn commands(&mut self, buf: &mut [u8]) -> Flow {
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Attach { node, instance, socket } => self.attach(node, instance, socket),
                Command::CloseOutputs { node } => {
                    // Everything the node sent before it exited is still in
                    // its socket: route that first, then close.
                    if let Some(instance) = self.by_node.get(&node).copied() {
                        self.read_all(instance, buf);
                    }
                    let targets: Vec<_> = self.routes.fed_by(&node).cloned().collect();
                    for (receiver, input) in targets {
                        self.send_to_node(&receiver, None, DaemonMsg::InputClosed { input });
                    }
                    // It will not attach again: what waited for it is void.
                    if let Some(mut queue) = self.pending.remove(&node) {
                        let msgs: Vec<DaemonMsg> = queue.drain().collect();
                        for msg in msgs {
                            self.discard(msg);
                        }
                    }
                    self.finished.insert(node);
                }
                Command::Stop { node: Some(node) } => self.send_to_node(&node, None, DaemonMsg::Stop),
                Command::Stop { node: None } => {
                    let nodes: Vec<String> = self.by_node.keys().cloned().collect();
                    for node in nodes {
                        self.send_to_node(&node, None, DaemonMsg::Stop);
                    }
                }
                Command::Shutdown => return Flow::Shutdown,
            }
        }
        Flow::Continue
    }

    fn attach(&mut self, node: String, instance: Instance, socket: OwnedFd) {
        if let Err(e) = epoll::add(&self.epoll, &socket, epoll::EventData::new_u64(instance), epoll::EventFlags::IN) {
            eprintln!("rill: cannot watch node {node}: {e}");
            return;
        }
        if let Some(old) = self.by_node.insert(node.clone(), instance) {
            self.disconnect(old);
            self.by_node.insert(node.clone(), instance);
        }
        self.conns.insert(instance, Conn::new(node.clone(), socket));
        if let Some(mut queue) = self.pending.remove(&node) {
            while let Some((input, msg)) = queue.pop() {
                // Closed inputs are re-announced below, once.
                if let DaemonMsg::InputClosed { .. } = msg {
                    continue;
                }
                if let DaemonMsg::Input { payload: Payload::Shared { .. }, token, .. } = &msg {
                    self.shm.reassign(*token, instance);
                }
                self.enqueue(instance, input, msg);
            }
        }
        // A restarted node learns at once which producers are already gone.
        let closed: Vec<String> = self
            .routes
            .upstream
            .get(&node)
            .into_iter()
            .flatten()
            .filter(|(source, _)| self.finished.contains(source))
            .map(|(_, input)| input.clone())
            .collect();
        for input in closed {
            self.enqueue(instance, None, DaemonMsg::InputClosed { input });
        }
    }

    fn disconnect(&mut self, instance: Instance) {
        let Some(mut conn) = self.conns.remove(&instance) else { return };
        let _ = epoll::delete(&self.epoll, &conn.fd);
        if self.by_node.get(&conn.node) == Some(&instance) {
            self.by_node.remove(&conn.node);
        }
        let mut actions = Vec::new();
        for msg in conn.inputs.drain() {
            if let DaemonMsg::Input { payload: Payload::Shared { .. }, token, .. } = msg {
                actions.extend(self.shm.release(token));
            }
        }
        actions.extend(self.shm.node_gone(instance));
        self.apply(actions);
    }

    fn read_all(&mut self, instance: Instance, buf: &mut [u8]) {
        let mut reset_seen = false;
        loop {
            let Some(conn) = self.conns.get(&instance) else { return };
            match transport::recv_packet(conn.fd.as_fd(), buf, true) {
                Ok((0, _)) => return self.disconnect(instance),
                Ok((n, mut fds)) => match NodeMsg::decode(&buf[..n]) {
                    Ok(msg) => self.handle(instance, msg, fds.pop()),
                    Err(e) => eprintln!("rill: dropping undecodable message from node {}: {e}", conn.node),
                },
                Err(Errno::WOULDBLOCK) => return,
                // A node that exits with unread messages (e.g. Reclaims)
                // makes the kernel report ECONNRESET once, ahead of the
                // packets it did send: read on, they still count.
                Err(Errno::CONNRESET) if !reset_seen => reset_seen = true,
                Err(e) => {
                    eprintln!("rill: lost the connection to node {}: {e}", conn.node);
                    return self.disconnect(instance);
                }
            }
        }
    }

    fn handle(&mut self, instance: Instance, msg: NodeMsg, fd: Option<OwnedFd>) {
        match msg {
            NodeMsg::Send { output, metadata, payload, .. } => self.route(instance, output, metadata, payload, fd),
            NodeMsg::Release { token } => {
                let actions = self.shm.release(token);
                self.apply(actions);
            }
            NodeMsg::Ack { count } => {
                if let Some(conn) = self.conns.get_mut(&instance) {
                    conn.in_flight = conn.in_flight.saturating_sub(count);
                }
                self.flush(instance);
            }
            NodeMsg::RegionDropped { region } => {
                let actions = self.shm.owner_dropped(instance, region);
                self.apply(actions);
            }
        }
    }

    fn route(&mut self, instance: Instance, output: String, metadata: Metadata, payload: Payload, fd: Option<OwnedFd>) {
        let Some(conn) = self.conns.get(&instance) else { return };
        let key = (conn.node.clone(), output);
        let targets: Vec<(String, String)> = self.routes.by_output.get(&key).cloned().unwrap_or_default();
        match payload {
            Payload::Inline(bytes) => {
                for (receiver, input) in targets {
                    let payload = Payload::Inline(bytes.clone());
                    let msg = DaemonMsg::Input { input: input.clone(), metadata, payload, token: 0, new_region: false };
                    self.stats.routed += 1;
                    self.send_to_node(&receiver, Some(input), msg);
                }
            }
            Payload::Shared { region, len, region_len } => {
                let Some(shm_key) = self.shm.key_for(instance, region, fd) else {
                    eprintln!("rill: node {} sent unknown shared region {region}", key.0);
                    return;
                };
                let mut delivered = false;
                for (receiver, input) in targets {
                    if self.finished.contains(&receiver) {
                        continue;
                    }
                    // 0 = not attached yet; reassigned when it attaches.
                    let receiver_instance = self.by_node.get(&receiver).copied().unwrap_or(0);
                    let Some(token) = self.shm.deliver(shm_key, receiver_instance) else { continue };
                    delivered = true;
                    let payload = Payload::Shared { region: shm_key, len, region_len };
                    let msg = DaemonMsg::Input { input: input.clone(), metadata, payload, token, new_region: false };
                    self.stats.routed += 1;
                    self.send_to_node(&receiver, Some(input), msg);
                }
                if !delivered {
                    let actions = self.shm.unused(shm_key);
                    self.apply(actions);
                }
            }
        }
    }

    /// Delivers to `node`'s current process, or keeps the message until it
    /// attaches; a finished node gets nothing.
    fn send_to_node(&mut self, node: &str, input: Option<String>, msg: DaemonMsg) {
        if let Some(instance) = self.by_node.get(node).copied() {
            return self.enqueue(instance, input, msg);
        }
        if self.finished.contains(node) || matches!(msg, DaemonMsg::Stop) {
            return self.discard(msg);
        }
        let capacity = self.capacity(node, input.as_ref());
        let key = if msg.is_droppable() { input } else { None };
        let queue = self.pending.entry(node.to_owned()).or_default();
        if let Pushed::DroppedOldest(old) = queue.push(key, capacity, msg) {
            self.stats.dropped += 1;
            self.discard(old);
        }
    }

    fn capacity(&self, node: &str, input: Option<&String>) -> usize {
        input.and_then(|i| self.routes.queue_size.get(&(node.to_owned(), i.clone()))).copied().unwrap_or(1)
    }

    /// Queues `msg` for the node and sends what the socket and the window
    /// allow. A full input queue drops its oldest message.
    fn enqueue(&mut self, instance: Instance, input: Option<String>, msg: DaemonMsg) {
        let capacity = match self.conns.get(&instance) {
            Some(conn) => self.capacity(&conn.node, input.as_ref()),
            None => return self.discard(msg),
        };
        let Some(conn) = self.conns.get_mut(&instance) else { return };
        let pushed = match msg {
            DaemonMsg::Stop => {
                conn.control.push_front(msg);
                Pushed::Kept
            }
            DaemonMsg::Reclaim { .. } | DaemonMsg::Unmap { .. } => {
                conn.control.push_back(msg);
                Pushed::Kept
            }
            DaemonMsg::Input { .. } => conn.inputs.push(input, capacity, msg),
            DaemonMsg::InputClosed { .. } => conn.inputs.push(None, capacity, msg),
        };
        if let Pushed::DroppedOldest(old) = pushed {
            self.stats.dropped += 1;
            self.discard(old);
        }
        self.flush(instance);
    }

    /// A message that will never be sent: release what it holds.
    fn discard(&mut self, msg: DaemonMsg) {
        if let DaemonMsg::Input { payload: Payload::Shared { .. }, token, .. } = msg {
            let actions = self.shm.release(token);
            self.apply(actions);
        }
    }

    /// Writes queued messages, many per packet, until the socket is full
    /// (then waits for EPOLLOUT) or the input window is (then waits for an
    /// `Ack`).
    fn flush(&mut self, instance: Instance) {
        let mut buf = std::mem::take(&mut self.packet);
        while let Some(conn) = self.conns.get_mut(&instance) {
            let taken = take_batch(conn);
            if taken.is_empty() {
                self.want_write(instance, false);
                break;
            }
            match write_batch(conn, &mut self.shm, instance, &taken, &mut buf) {
                Ok(()) => {
                    let inputs = taken.iter().filter(|t| matches!(t.msg, DaemonMsg::Input { .. })).count();
                    conn.in_flight += inputs as u32;
                }
                Err(Errno::WOULDBLOCK) => {
                    for t in taken.into_iter().rev() {
                        if t.control {
                            conn.control.push_front(t.msg);
                        } else {
                            conn.inputs.push_front(t.key, t.msg);
                        }
                    }
                    self.want_write(instance, true);
                    break;
                }
                Err(_) => {
                    for t in taken {
                        self.discard(t.msg);
                    }
                }
            }
        }
        self.packet = buf;
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

    fn apply(&mut self, actions: Vec<ShmAction>) {
        for action in actions {
            match action {
                ShmAction::Reclaim { owner, region } => self.enqueue(owner, None, DaemonMsg::Reclaim { region }),
                ShmAction::Unmap { receiver, key } => self.enqueue(receiver, None, DaemonMsg::Unmap { region: key }),
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
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
        let metadata = Metadata { timestamp_ns: now_ns() };
        for (node, input) in due {
            let msg = DaemonMsg::Input { input: input.clone(), metadata, payload: Payload::Inline(Vec::new()), token: 0, new_region: false };
            self.send_to_node(&node, Some(input), msg);
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Most messages in one packet.
const MAX_BATCH: usize = 64;
/// Stop adding to a packet past this many bytes (one inline message is below 4.2 KiB).
const BATCH_BYTES: usize = 32 * 1024;

/// A message taken off a node's queues for the next packet.
struct Taken {
    control: bool,
    key: Option<String>,
    msg: DaemonMsg,
}

/// Takes what the next packet may carry: control messages first, then
/// inputs while the window allows.
fn take_batch(conn: &mut Conn) -> Vec<Taken> {
    let mut taken = Vec::new();
    let mut inputs = 0u32;
    let mut new_regions = 0usize;
    let mut bytes = 0usize;
    while taken.len() < MAX_BATCH && bytes < BATCH_BYTES {
        if let Some(msg) = conn.control.pop_front() {
            taken.push(Taken { control: true, key: None, msg });
            continue;
        }
        match conn.inputs.peek() {
            Some(DaemonMsg::Input { .. }) if conn.in_flight + inputs >= INPUT_WINDOW => break,
            // Every shared input may need its region's fd.
            Some(DaemonMsg::Input { payload: Payload::Shared { .. }, .. }) if new_regions == transport::MAX_FDS => break,
            Some(_) => {}
            None => break,
        }
        let Some((key, msg)) = conn.inputs.pop() else { break };
        if let DaemonMsg::Input { payload, input, .. } = &msg {
            inputs += 1;
            // Generous estimate of the encoded size.
            bytes += 64 + input.len() + if let Payload::Inline(b) = payload { b.len() } else { 0 };
            if let Payload::Shared { .. } = payload {
                new_regions += 1;
            }
        }
        taken.push(Taken { control: false, key, msg });
    }
    taken
}

/// Encodes `taken` as one packet (a batch if more than one) with the fds of
/// regions the node has not mapped yet, and sends it without blocking.
fn write_batch(conn: &Conn, shm: &mut ShmTable, instance: Instance, taken: &[Taken], buf: &mut Vec<u8>) -> Result<(), Errno> {
    let mut first_use: Vec<u64> = Vec::new();
    let mut msgs: Vec<DaemonMsg> = Vec::with_capacity(taken.len());
    for t in taken {
        let mut msg = t.msg.clone();
        if let DaemonMsg::Input { payload: Payload::Shared { region, .. }, new_region, .. } = &mut msg {
            *new_region = !first_use.contains(region) && shm.first_use_fd(*region, instance).is_some();
            if *new_region {
                first_use.push(*region);
            }
        }
        msgs.push(msg);
    }
    buf.clear();
    if let [msg] = &msgs[..] {
        msg.encode(buf);
    } else {
        let mut batch = rill_proto::Batch::new(buf);
        for msg in &msgs {
            batch.push(msg);
        }
    }
    let fds: Vec<_> = first_use.iter().filter_map(|key| shm.first_use_fd(*key, instance)).collect();
    transport::send_packet(conn.fd.as_fd(), buf, &fds, true)?;
    for key in first_use {
        shm.mark_mapped(key, instance);
    }
    Ok(())
}
