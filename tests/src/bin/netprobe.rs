//! A network probe for the node-agent tests: joins a cgroup and a network namespace (before it
//! opens any socket, since a socket's cgroup is fixed when it is created), tries one way of
//! reaching an address, and prints one JSON line saying what happened. Never fails on a
//! network error: the error is the result the test looks at.
//!
//! ```text
//! netprobe [--cgroup DIR] [--netns FILE] tcp ADDR      connect, send "hello", read one line
//! netprobe [--cgroup DIR] [--netns FILE] udp ADDR      send a datagram, wait for an answer
//! netprobe [--cgroup DIR] [--netns FILE] hold ADDR     connect, print, wait for a stdin line,
//!                                                      then send "after" and read one line
//! netprobe [--cgroup DIR] [--netns FILE] raw-udp ADDR  hand-made UDP datagram "raw-ping" on a
//!                                                      raw IP socket (no connect, no UDP stack)
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

const IO_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Parser)]
struct Cli {
    /// cgroup v2 directory to move into first.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Network namespace file (e.g. /run/netns/NAME) to enter first.
    #[arg(long)]
    netns: Option<PathBuf>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    Tcp { addr: SocketAddr },
    Udp { addr: SocketAddr },
    Hold { addr: SocketAddr },
    RawUdp { addr: SocketAddr },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(cgroup) = &cli.cgroup {
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("join cgroup {}", cgroup.display()))?;
    }
    if let Some(netns) = &cli.netns {
        enter_netns(netns)?;
    }
    let result = match cli.action {
        Action::Tcp { addr } => tcp(addr, "hello"),
        Action::Udp { addr } => udp(addr),
        Action::Hold { addr } => hold(addr),
        Action::RawUdp { addr } => raw_udp(addr),
    };
    println!("{result}");
    Ok(())
}

fn enter_netns(path: &PathBuf) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: a valid fd for the call's duration; this process is single-threaded here.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn error_json(stage: &str, err: &std::io::Error) -> serde_json::Value {
    json!({"ok": false, "stage": stage, "error": err.to_string(), "errno": err.raw_os_error()})
}

fn tcp(addr: SocketAddr, line: &str) -> serde_json::Value {
    let stream = match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
        Ok(stream) => stream,
        Err(err) => return error_json("connect", &err),
    };
    exchange(stream, line)
}

fn exchange(mut stream: TcpStream, line: &str) -> serde_json::Value {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    if let Err(err) = stream.write_all(format!("{line}\n").as_bytes()) {
        return error_json("write", &err);
    }
    let mut reply = String::new();
    match BufReader::new(&stream).read_line(&mut reply) {
        Ok(0) => json!({"ok": false, "stage": "read", "error": "closed", "peer": peer}),
        Ok(_) => json!({"ok": true, "peer": peer, "local": local, "reply": reply.trim_end()}),
        Err(err) => {
            let mut value = error_json("read", &err);
            value["peer"] = json!(peer);
            value
        }
    }
}

fn udp(addr: SocketAddr) -> serde_json::Value {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(addr)
    } else {
        "[::]:0".parse().unwrap_or(addr)
    };
    let socket = match UdpSocket::bind(bind) {
        Ok(socket) => socket,
        Err(err) => return error_json("bind", &err),
    };
    let _ = socket.set_read_timeout(Some(IO_TIMEOUT));
    if let Err(err) = socket.send_to(b"ping", addr) {
        return error_json("send", &err);
    }
    let mut buf = [0u8; 512];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => json!({
            "ok": true,
            "reply": String::from_utf8_lossy(&buf[..n]),
            "peer": from.to_string(),
        }),
        Err(err) => error_json("recv", &err),
    }
}

/// A connection opened now and used later, to see what happens to connections that predate
/// the agent.
fn hold(addr: SocketAddr) -> serde_json::Value {
    let stream = match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
        Ok(stream) => stream,
        Err(err) => return error_json("connect", &err),
    };
    println!("{}", json!({"connected": true}));
    let _ = std::io::stdout().flush();
    let mut go = String::new();
    let _ = std::io::stdin().read_line(&mut go);
    exchange(stream, "after")
}

/// Sends one UDP datagram built by hand through `SOCK_RAW`/`IPPROTO_UDP`: the kernel adds the IP
/// header, but neither connect() nor the UDP socket hooks are involved.
fn raw_udp(addr: SocketAddr) -> serde_json::Value {
    use std::os::fd::{FromRawFd, OwnedFd};
    let SocketAddr::V4(v4) = addr else {
        return json!({"ok": false, "stage": "args", "error": "IPv4 only"});
    };
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
    if raw < 0 {
        return error_json("socket", &std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let payload = b"raw-ping";
    let mut datagram = Vec::with_capacity(8 + payload.len());
    datagram.extend_from_slice(&40_000u16.to_be_bytes());
    datagram.extend_from_slice(&v4.port().to_be_bytes());
    datagram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&0u16.to_be_bytes()); // no checksum: allowed for UDP over IPv4
    datagram.extend_from_slice(payload);
    let target = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(v4.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: buffer and address are valid for the call; lengths match them.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            datagram.as_ptr().cast(),
            datagram.len(),
            0,
            (&target as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return error_json("send", &std::io::Error::last_os_error());
    }
    json!({"ok": true, "sent": sent})
}
