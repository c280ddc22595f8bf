//! A TCP relay between a daemon and its coordinator that a test can cut,
//! to make the network faults a fleet meets (a Wi-Fi drop, a partition)
//! with real sockets on loopback: a cut connection stays open at both ends
//! but carries nothing back and never delivers the daemon's hang-up, which
//! is what a lost link looks like to the peers.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often blocked relay threads look at the flags.
const POLL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Flags {
    /// The relay is being dropped: every thread ends.
    closed: AtomicBool,
    /// New connections are accepted and closed at once (the coordinator is
    /// unreachable).
    refuse_new: AtomicBool,
}

/// One relayed connection: both sockets (kept open while cut, so neither
/// end sees a hang-up) and whether it is cut.
struct Link {
    client: TcpStream,
    upstream: TcpStream,
    cut: Arc<AtomicBool>,
}

pub struct Relay {
    pub port: u16,
    flags: Arc<Flags>,
    links: Arc<Mutex<Vec<Link>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to
    /// `127.0.0.1:upstream`.
    pub fn to(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay listener");
        let port = listener.local_addr().expect("relay address").port();
        listener.set_nonblocking(true).expect("nonblocking listener");
        let relay = Self {
            port,
            flags: Arc::new(Flags::default()),
            links: Arc::new(Mutex::new(Vec::new())),
            threads: Arc::new(Mutex::new(Vec::new())),
        };
        let (flags, links, threads) = (relay.flags.clone(), relay.links.clone(), relay.threads.clone());
        let accept = std::thread::spawn(move || {
            while !flags.closed.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(POLL);
                        continue;
                    }
                };
                if flags.refuse_new.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let _ = client.set_nonblocking(false);
                let cut = Arc::new(AtomicBool::new(false));
                let pumps = [
                    pump(&client, &upstream, &flags, &cut, Direction::ToCoordinator),
                    pump(&upstream, &client, &flags, &cut, Direction::ToDaemon),
                ];
                let (Ok(client), Ok(upstream)) = (client.try_clone(), upstream.try_clone()) else { continue };
                lock(&links).push(Link { client, upstream, cut });
                lock(&threads).extend(pumps.into_iter().flatten());
            }
        });
        lock(&relay.threads).push(accept);
        relay
    }

    /// Cuts every open connection: what the coordinator sends is lost, what
    /// the daemon sends still arrives until it hangs up, and its hang-up is
    /// never delivered. New connections still get through.
    pub fn cut(&self) {
        for link in lock(&self.links).iter() {
            link.cut.store(true, Ordering::SeqCst);
        }
    }

    /// [`Relay::cut`], and new connections are closed at once until
    /// [`Relay::heal`].
    pub fn partition(&self) {
        self.flags.refuse_new.store(true, Ordering::SeqCst);
        self.cut();
    }

    /// New connections get through again (cut ones stay cut).
    pub fn heal(&self) {
        self.flags.refuse_new.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.flags.closed.store(true, Ordering::SeqCst);
        for link in lock(&self.links).drain(..) {
            let _ = link.client.shutdown(Shutdown::Both);
            let _ = link.upstream.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    ToCoordinator,
    ToDaemon,
}

/// Copies `from` to `to` until EOF, the relay closes, or (towards the
/// daemon) the link is cut. A cut link keeps carrying the daemon's bytes but
/// swallows its EOF.
fn pump(
    from: &TcpStream,
    to: &TcpStream,
    flags: &Arc<Flags>,
    cut: &Arc<AtomicBool>,
    direction: Direction,
) -> Option<JoinHandle<()>> {
    let (mut from, mut to) = (from.try_clone().ok()?, to.try_clone().ok()?);
    let (flags, cut) = (flags.clone(), cut.clone());
    from.set_read_timeout(Some(POLL)).ok()?;
    Some(std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while !flags.closed.load(Ordering::SeqCst) {
            let is_cut = cut.load(Ordering::SeqCst);
            if is_cut && direction == Direction::ToDaemon {
                return;
            }
            match from.read(&mut buf) {
                Ok(0) => {
                    if !cut.load(Ordering::SeqCst) {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                    return;
                }
                Ok(n) => {
                    if cut.load(Ordering::SeqCst) && direction == Direction::ToDaemon {
                        return;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    }))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
