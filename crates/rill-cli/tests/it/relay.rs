//! A TCP relay between a daemon and its coordinator that a test can cut,
//! to make the network faults a fleet meets (a Wi-Fi drop, a partition)
//! with real sockets on loopback: a cut connection stays open at both ends
//! but loses what is sent over it and never delivers a hang-up, which is
//! what a lost link looks like to the peers.

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
                let pumps = [pump(&client, &upstream, &flags, &cut), pump(&upstream, &client, &flags, &cut)];
                let (Ok(client), Ok(upstream)) = (client.try_clone(), upstream.try_clone()) else { continue };
                lock(&links).push(Link { client, upstream, cut });
                lock(&threads).extend(pumps.into_iter().flatten());
            }
        });
        lock(&relay.threads).push(accept);
        relay
    }

    /// Cuts every open connection: it carries nothing any more and
    /// delivers no hang-up. New connections get through.
    pub fn cut(&self) {
        for link in lock(&self.links).iter() {
            link.cut.store(true, Ordering::SeqCst);
        }
    }

    /// A partition: [`Relay::cut`], and new connections are closed at once
    /// until [`Relay::heal`].
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

/// Copies `from` to `to` until EOF or the relay closes; once the link is
/// cut, stops (what is read is dropped, EOF is not passed on).
fn pump(from: &TcpStream, to: &TcpStream, flags: &Arc<Flags>, cut: &Arc<AtomicBool>) -> Option<JoinHandle<()>> {
    let (mut from, mut to) = (from.try_clone().ok()?, to.try_clone().ok()?);
    let (flags, cut) = (flags.clone(), cut.clone());
    from.set_read_timeout(Some(POLL)).ok()?;
    Some(std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while !flags.closed.load(Ordering::SeqCst) && !cut.load(Ordering::SeqCst) {
            match from.read(&mut buf) {
                _ if cut.load(Ordering::SeqCst) => return,
                Ok(0) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => {
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
