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
//! netprobe ... tfo [--mptcp] [--line L] ADDR           TCP Fast Open: sendto(MSG_FASTOPEN) of the
//!                                                      line on an unconnected socket (MPTCP with
//!                                                      --mptcp), read one line
//! netprobe ... tfo-connect [--line L] ADDR             TCP_FASTOPEN_CONNECT, connect(), write the
//!                                                      line (it rides in the SYN), read one line
//! netprobe ... mptcp [--line L] ADDR                   IPPROTO_MPTCP socket, connect, line, reply
//! netprobe ... tcp-bound [--source IP] [--device DEV] [--line L] ADDR
//!                                                      bind() the source address and/or
//!                                                      SO_BINDTODEVICE before connect()
//! ```
//!
//! The socket modes from `tfo` on answer like `tcp` (`ok`, `peer`, `local`, `reply`, or `stage`,
//! `error`, `errno`) and add `syn_data` (the kernel's TCPI_OPT_SYN_DATA: data in the SYN was
//! acknowledged), `mptcp` (TCP_IS_MPTCP: the connection really is MPTCP, not a TCP fallback),
//! and the namespace's `tcp_fastopen` and `mptcp_enabled` sysctls.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    Tcp {
        addr: SocketAddr,
    },
    Udp {
        addr: SocketAddr,
    },
    Hold {
        addr: SocketAddr,
    },
    RawUdp {
        addr: SocketAddr,
    },
    Tfo {
        addr: SocketAddr,
        /// An IPPROTO_MPTCP socket instead of TCP.
        #[arg(long)]
        mptcp: bool,
        #[arg(long, default_value = "hello")]
        line: String,
    },
    TfoConnect {
        addr: SocketAddr,
        #[arg(long, default_value = "hello")]
        line: String,
    },
    Mptcp {
        addr: SocketAddr,
        #[arg(long, default_value = "hello")]
        line: String,
    },
    TcpBound {
        addr: SocketAddr,
        /// Local address to bind() before connect() (port 0).
        #[arg(long)]
        source: Option<std::net::IpAddr>,
        /// Interface for SO_BINDTODEVICE before connect().
        #[arg(long)]
        device: Option<String>,
        #[arg(long, default_value = "hello")]
        line: String,
    },
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
        Action::Tfo { addr, mptcp, line } => with_sysctls(tfo_sendto(addr, mptcp, &line)),
        Action::TfoConnect { addr, line } => with_sysctls(tfo_connect(addr, &line)),
        Action::Mptcp { addr, line } => with_sysctls(mptcp(addr, &line)),
        Action::TcpBound {
            addr,
            source,
            device,
            line,
        } => with_sysctls(tcp_bound(addr, source, device.as_deref(), &line)),
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

/// The connection's (peer, local) addresses as text; empty when unknown.
fn addresses(stream: &TcpStream) -> (String, String) {
    let text =
        |a: std::io::Result<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    (text(stream.peer_addr()), text(stream.local_addr()))
}

fn exchange(mut stream: TcpStream, line: &str) -> serde_json::Value {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    if let Err(err) = stream.write_all(format!("{line}\n").as_bytes()) {
        return error_json("write", &err);
    }
    read_reply(&stream)
}

/// Reads one reply line: `{ok, peer, local, reply}`, or where it failed.
fn read_reply(stream: &TcpStream) -> serde_json::Value {
    let (peer, local) = addresses(stream);
    let mut reply = String::new();
    match BufReader::new(stream).read_line(&mut reply) {
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

// Not (all) in the libc crate: include/uapi/linux/tcp.h.
const TCP_IS_MPTCP: libc::c_int = 43;
const TCPI_OPT_SYN_DATA: u8 = 32;

/// Adds this network namespace's TCP Fast Open and MPTCP switches (read after setns, so they
/// are the pod's) to a result.
fn with_sysctls(mut value: serde_json::Value) -> serde_json::Value {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    };
    value["tcp_fastopen"] = json!(read("/proc/sys/net/ipv4/tcp_fastopen"));
    value["mptcp_enabled"] = json!(read("/proc/sys/net/mptcp/enabled"));
    value
}

/// A blocking stream socket of `addr`'s family; connect() and a fast-open sendto() give up
/// after IO_TIMEOUT (both wait at most SO_SNDTIMEO, and then fail with EINPROGRESS).
fn stream_socket(addr: &SocketAddr, protocol: libc::c_int) -> std::io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, protocol) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let timeout = libc::timeval {
        tv_sec: IO_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    for option in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
        setsockopt(&fd, libc::SOL_SOCKET, option, &timeout)?;
    }
    Ok(fd)
}

fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: `value` is valid for reads of size_of::<T>() bytes during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `addr` as a C socket address.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn connect_fd(fd: &OwnedFd, addr: &SocketAddr) -> std::io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid address of `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn getsockopt_bytes(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> Option<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is writable for `len` bytes; the kernel writes at most that many.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(len as usize)
}

/// Whether the SYN's data was acknowledged (TCP_INFO's tcpi_options, the sixth byte).
fn syn_data(fd: &OwnedFd) -> Option<bool> {
    let mut info = [0u8; 256];
    let len = getsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    (len > 5).then(|| info[5] & TCPI_OPT_SYN_DATA != 0)
}

/// TCP_IS_MPTCP: 1 on an MPTCP socket that did not fall back to plain TCP.
fn is_mptcp(fd: &OwnedFd) -> Option<bool> {
    let mut value = [0u8; 4];
    let len = getsockopt_bytes(fd, libc::IPPROTO_TCP, TCP_IS_MPTCP, &mut value)?;
    (len == 4).then(|| i32::from_ne_bytes(value) != 0)
}

/// Reads the reply line on a connected socket whose line was already sent; the same JSON as
/// `exchange`, plus `syn_data` and `mptcp`.
fn reply_of(fd: OwnedFd) -> serde_json::Value {
    let stream = TcpStream::from(fd);
    let mut value = read_reply(&stream);
    let fd = OwnedFd::from(stream);
    value["syn_data"] = json!(syn_data(&fd));
    value["mptcp"] = json!(is_mptcp(&fd));
    value
}

/// Writes the line on a connected socket, then `reply_of`.
fn send_then_reply(fd: OwnedFd, line: &str) -> serde_json::Value {
    let mut stream = TcpStream::from(fd);
    if let Err(err) = stream.write_all(format!("{line}\n").as_bytes()) {
        return error_json("write", &err);
    }
    reply_of(OwnedFd::from(stream))
}

/// TCP Fast Open, the sendto() form: no connect(); the first sendto() with MSG_FASTOPEN and an
/// address opens the connection, its data in the SYN when the kernel may (client bit of
/// net.ipv4.tcp_fastopen, and a cookie or the no-cookie bit).
fn tfo_sendto(addr: SocketAddr, mptcp: bool, line: &str) -> serde_json::Value {
    let protocol = if mptcp { libc::IPPROTO_MPTCP } else { 0 };
    let fd = match stream_socket(&addr, protocol) {
        Ok(fd) => fd,
        Err(err) => return error_json("socket", &err),
    };
    let data = format!("{line}\n");
    let (storage, len) = sockaddr(&addr);
    // SAFETY: buffer and address are valid for the call; lengths match them.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_FASTOPEN,
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if sent < 0 {
        return error_json("sendto", &std::io::Error::last_os_error());
    }
    // A short write leaves the rest for an ordinary write on the now connected socket.
    let sent = sent as usize;
    if sent < data.len() {
        let mut stream = TcpStream::from(fd);
        if let Err(err) = stream.write_all(&data.as_bytes()[sent..]) {
            return error_json("write", &err);
        }
        return reply_of(OwnedFd::from(stream));
    }
    reply_of(fd)
}

/// TCP Fast Open, the TCP_FASTOPEN_CONNECT form: connect() returns at once and the SYN leaves
/// with the first write.
fn tfo_connect(addr: SocketAddr, line: &str) -> serde_json::Value {
    let fd = match stream_socket(&addr, 0) {
        Ok(fd) => fd,
        Err(err) => return error_json("socket", &err),
    };
    if let Err(err) = setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_FASTOPEN_CONNECT, &1i32) {
        return error_json("setsockopt", &err);
    }
    if let Err(err) = connect_fd(&fd, &addr) {
        return error_json("connect", &err);
    }
    send_then_reply(fd, line)
}

/// Multipath TCP: the kernel opens the first subflow (a TCP socket of its own) for the
/// application's socket.
fn mptcp(addr: SocketAddr, line: &str) -> serde_json::Value {
    let fd = match stream_socket(&addr, libc::IPPROTO_MPTCP) {
        Ok(fd) => fd,
        Err(err) => return error_json("socket", &err),
    };
    if let Err(err) = connect_fd(&fd, &addr) {
        return error_json("connect", &err);
    }
    send_then_reply(fd, line)
}

/// Plain TCP with the source chosen by the caller: a bound local address and/or a bound device.
fn tcp_bound(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    device: Option<&str>,
    line: &str,
) -> serde_json::Value {
    let fd = match stream_socket(&addr, 0) {
        Ok(fd) => fd,
        Err(err) => return error_json("socket", &err),
    };
    if let Some(device) = device {
        // SAFETY: the name's bytes are valid for the call; the kernel copies at most len.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                device.as_ptr().cast(),
                device.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return error_json("bindtodevice", &std::io::Error::last_os_error());
        }
    }
    if let Some(source) = source {
        let (storage, len) = sockaddr(&SocketAddr::new(source, 0));
        // SAFETY: `storage` holds a valid address of `len` bytes.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&storage as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if rc != 0 {
            return error_json("bind", &std::io::Error::last_os_error());
        }
    }
    if let Err(err) = connect_fd(&fd, &addr) {
        return error_json("connect", &err);
    }
    send_then_reply(fd, line)
}
