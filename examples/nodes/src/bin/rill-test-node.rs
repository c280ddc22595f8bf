//! One node binary with the behaviours the integration tests and the leak
//! test need; the mode is the first argument:
//!   print [N]          print every event (and `corrupt ...` for a payload whose words
//!                      are not all its seq); exit after N inputs (default: never)
//!   echo [MS]          print every input as text: `<input>: <payload>`, sleeping MS after each
//!   slow MS            print every input's sequence number, sleeping MS after each
//!   burst N SIZE       send N messages of SIZE bytes (sequence number first), then exit
//!   burst-sleep S N:SIZE[,N:SIZE..]  send N messages of SIZE bytes per pair,
//!                      back to back, print `sent TOTAL`, then sleep S seconds
//!                      without calling rill-node before exiting
//!   flood SIZE         send SIZE-byte messages until Stop; print `sent K` every 10,000
//!   wait-stop          wait for Stop, print `got stop`, exit 0
//!   crash CODE         print a line to stderr and exit with CODE
//!   fail-until FILE N  count runs in FILE; exit 1 until the Nth run, then 0
//!   crash-once FILE N  count runs in FILE; print N inputs, then exit 1 on the
//!                      first run and 0 later (a consumer that restarts)
//!   burst-once FILE N  count runs in FILE; send N messages, then exit 1 on
//!                      the first run and 0 later (a producer that restarts)
//!   count-send         on every input, send its count (a sequence number) on `out`
//!   host MODE ...      print `host NAME` (this machine's hostname), then run MODE
use std::time::Duration;

use rill_node::{Event, Node};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn arg(args: &[String], i: usize) -> Result<&str> {
    args.get(i).map(String::as_str).ok_or_else(|| format!("missing argument {i}").into())
}

fn seq_of(data: &[u8]) -> u64 {
    data.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

fn main() -> Result {
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("host") {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
        println!("host {}", name.trim());
        args.remove(1);
    }
    match arg(&args, 1)? {
        "print" => print(args.get(2).and_then(|n| n.parse().ok())),
        "echo" => echo(args.get(2).and_then(|ms| ms.parse().ok()).unwrap_or(0)),
        "slow" => slow(arg(&args, 2)?.parse()?),
        "burst" => burst(arg(&args, 2)?.parse()?, arg(&args, 3)?.parse()?),
        "burst-sleep" => burst_sleep(arg(&args, 2)?.parse()?, arg(&args, 3)?),
        "flood" => flood(arg(&args, 2)?.parse()?),
        "count-send" => count_send(),
        "wait-stop" => wait_stop(0),
        "chatty" => wait_stop(arg(&args, 2)?.parse()?),
        "bad-region" => bad_region(),
        "crash" => {
            eprintln!("something went badly wrong");
            std::process::exit(arg(&args, 2)?.parse()?)
        }
        "kill-daemon" => kill_daemon(),
        "fail-until" => fail_until(arg(&args, 2)?, arg(&args, 3)?.parse()?),
        "crash-once" => crash_once(arg(&args, 2)?, arg(&args, 3)?.parse()?),
        "burst-once" => burst_once(arg(&args, 2)?, arg(&args, 3)?.parse()?),
        other => Err(format!("unknown mode {other}").into()),
    }
}

/// A node that takes its machine's daemon down as soon as it starts (the
/// worst crash loop auto-recovery can meet): SIGKILL to its parent, the
/// daemon that spawned it, then it fails.
fn kill_daemon() -> Result {
    let _node = Node::from_env()?;
    let daemon = std::os::unix::process::parent_id().to_string();
    println!("killing daemon {daemon}");
    std::process::Command::new("sh").args(["-c", "kill -9 \"$1\"", "sh", &daemon]).status()?;
    std::process::exit(1)
}

fn print(limit: Option<usize>) -> Result {
    let mut node = Node::from_env()?;
    let mut inputs = 0;
    while let Some(event) = node.next_event() {
        match event {
            Event::Input { id, data, .. } => {
                inputs += 1;
                let seq = seq_of(&data);
                println!("input {id} len={} seq={seq} shared={}", data.len(), data.is_shared());
                if !data.chunks_exact(8).all(|word| word == seq.to_le_bytes()) {
                    println!("corrupt input {id} seq={seq}: a word of its payload is not its seq");
                }
                if limit == Some(inputs) {
                    break;
                }
            }
            Event::InputClosed { id } => println!("closed {id}"),
            Event::Stop => println!("stop"),
        }
    }
    println!("done after {inputs} inputs");
    Ok(())
}

/// Prints each input as text: `<input>: <payload>`, sleeping `ms` after each.
fn echo(ms: u64) -> Result {
    let mut node = Node::from_env()?;
    while let Some(event) = node.next_event() {
        match event {
            Event::Input { id, data, .. } => {
                println!("{id}: {}", String::from_utf8_lossy(&data));
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            Event::InputClosed { id } => println!("closed {id}"),
            Event::Stop => println!("stop"),
        }
    }
    Ok(())
}

fn slow(ms: u64) -> Result {
    let mut node = Node::from_env()?;
    while let Some(event) = node.next_event() {
        if let Event::Input { data, .. } = event {
            println!("seq {}", seq_of(&data));
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    Ok(())
}

/// Every 8-byte word of the payload is `seq` (a consumer can tell a
/// payload overwritten in flight by another message's).
fn send_seq(node: &mut Node, seq: u64, size: usize) -> Result {
    let mut sample = node.allocate(size.max(8))?;
    for word in sample.chunks_exact_mut(8) {
        word.copy_from_slice(&seq.to_le_bytes());
    }
    node.send_sample("out", sample)?;
    Ok(())
}

fn count_send() -> Result {
    let mut node = Node::from_env()?;
    let mut seq = 0;
    while let Some(event) = node.next_event() {
        if let Event::Input { .. } = event {
            send_seq(&mut node, seq, 8)?;
            seq += 1;
        }
    }
    Ok(())
}

fn burst(n: u64, size: usize) -> Result {
    let mut node = Node::from_env()?;
    for seq in 0..n {
        send_seq(&mut node, seq, size)?;
    }
    println!("sent {n}");
    Ok(())
}

fn burst_sleep(secs: u64, plan: &str) -> Result {
    let mut node = Node::from_env()?;
    let mut seq = 0u64;
    for part in plan.split(',') {
        let (count, size) = part.split_once(':').ok_or_else(|| format!("expected N:SIZE, got {part:?}"))?;
        for _ in 0..count.parse::<u64>()? {
            send_seq(&mut node, seq, size.parse()?)?;
            seq += 1;
        }
    }
    println!("sent {seq}");
    // A producer blocked on its camera or a long computation.
    std::thread::sleep(Duration::from_secs(secs));
    Ok(())
}

fn flood(size: usize) -> Result {
    let mut node = Node::from_env()?;
    let mut seq = 0u64;
    loop {
        match node.recv_timeout(Duration::ZERO) {
            Ok(Event::Stop) | Err(rill_node::RecvError::Finished) => break,
            _ => {}
        }
        send_seq(&mut node, seq, size)?;
        seq += 1;
        if seq.is_multiple_of(10_000) {
            println!("sent {seq}");
        }
    }
    println!("flood stopped after {seq}");
    Ok(())
}

/// Prints `lines` lines, then waits for Stop.
fn wait_stop(lines: u32) -> Result {
    let mut node = Node::from_env()?;
    for i in 0..lines {
        println!("line {i}");
    }
    println!("waiting pid={}", std::process::id());
    while let Some(event) = node.next_event() {
        if let Event::Stop = event {
            println!("got stop");
        }
    }
    Ok(())
}

fn count_run(file: &str) -> Result<u32> {
    let runs: u32 = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0) + 1;
    std::fs::write(file, runs.to_string())?;
    println!("run {runs}");
    Ok(runs)
}

fn crash_once(file: &str, n: usize) -> Result {
    let runs = count_run(file)?;
    let mut node = Node::from_env()?;
    let mut got = 0;
    while let Some(event) = node.next_event() {
        if let Event::Input { data, .. } = event {
            got += 1;
            println!("run {runs} got seq={}", seq_of(&data));
            if got == n {
                break;
            }
        }
    }
    std::process::exit(if runs == 1 { 1 } else { 0 })
}

fn burst_once(file: &str, n: u64) -> Result {
    let runs = count_run(file)?;
    let mut node = Node::from_env()?;
    for seq in 0..n {
        send_seq(&mut node, u64::from(runs) * 100 + seq, 8)?;
    }
    drop(node);
    std::process::exit(if runs == 1 { 1 } else { 0 })
}

fn fail_until(file: &str, n: u32) -> Result {
    let runs = count_run(file)?;
    if runs < n {
        eprintln!("failing on run {runs}");
        std::process::exit(1);
    }
    Ok(())
}

/// A producer that lies, speaking the wire protocol by hand: a shared
/// region announced as 1 GiB on a 4 KiB memfd, then a message longer than
/// its (honest) region, then one for an input the consumer does not have,
/// then a good inline message. A receiver must refuse the lies and live.
fn bad_region() -> Result {
    use rill_proto::transport::{recv_packet, send_packet};
    use rill_proto::{DaemonMsg, Direction, EdgeMsg, Metadata, Payload};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    let fd: i32 = std::env::var(rill_proto::env::FD)?.parse()?;
    // SAFETY: the daemon gave this process that fd as its control socket.
    let control = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = vec![0u8; rill_proto::MAX_PACKET];
    let mut edge = None;
    loop {
        let (n, fds) = recv_packet(control.as_fd(), &mut buf, false)?;
        match DaemonMsg::decode(&buf[..n])? {
            DaemonMsg::Edge { direction: Direction::Out, routes, .. } => {
                let input = routes.first().map(|r| r.input.clone()).ok_or("an edge without routes")?;
                edge = fds.into_iter().next().map(|fd| (fd, input));
            }
            DaemonMsg::Start => break,
            _ => {}
        }
    }
    let (edge, input) = edge.ok_or("no edge to a consumer")?;
    let metadata = Metadata { timestamp_ns: 0 };
    let send = |msg: EdgeMsg, fds: &[std::os::fd::BorrowedFd<'_>]| -> Result {
        let mut out = Vec::new();
        msg.encode(&mut out);
        send_packet(edge.as_fd(), &out, fds, false)?;
        Ok(())
    };
    let small = rill_proto::shm::Region::create(4096)?;
    let small_fd = small.fd().ok_or("no fd")?;
    let lie = Payload::Shared { region: 1, len: 4096, region_len: 1 << 30 };
    send(EdgeMsg::Data { input: input.clone(), metadata, payload: lie, new_region: true }, &[small_fd])?;
    let honest = rill_proto::shm::Region::create(4096)?;
    let honest_fd = honest.fd().ok_or("no fd")?;
    let too_long = Payload::Shared { region: 2, len: 1 << 20, region_len: 4096 };
    send(EdgeMsg::Data { input: input.clone(), metadata, payload: too_long, new_region: true }, &[honest_fd])?;
    let unknown = Payload::Inline(b"nobody".to_vec());
    send(EdgeMsg::Data { input: "not-an-input".into(), metadata, payload: unknown, new_region: false }, &[])?;
    send(
        EdgeMsg::Data { input, metadata, payload: Payload::Inline(b"after the lies".to_vec()), new_region: false },
        &[],
    )?;
    println!("lied");
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}
