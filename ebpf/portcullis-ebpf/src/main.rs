//! Kernel side of the Portcullis node agent: cgroup programs attached to each selected pod's
//! cgroup (v2) that send its connections to protected API endpoints through the gateway and drop
//! everything else that heads for those endpoints.
//!
//! Owns: the redirect decision at connect(), the address the application sees afterwards, the
//! bridge that lets the gateway find a connection's original destination, and the last-line
//! packet drop. Must never: let a packet to a protected address leave a selected cgroup (when in
//! doubt it refuses or drops), or touch a socket outside the cgroups it is attached to.
//!
//! Map layouts live in `portcullis-ebpf-common`; user space (`portcullis::redirect`) fills
//! `PROTECTED` and `GATEWAY`, and reads the `ORIG_BY_*` maps, `EVENTS` and `COUNTERS`.

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_skb_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{SkBuffContext, SockAddrContext, SockOpsContext},
    EbpfContext,
};
use portcullis_ebpf_common::{
    event_kind, protected_kind, ConnKey, Endpoint, Event, Gateway, OriginalDestination,
};

/// Verdicts of cgroup programs: 1 lets the operation or packet through, 0 refuses it (EPERM
/// for connect(), a silent drop for a packet).
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;

/// How many connections can wait between connect() and the gateway's lookup. LRU: a flood
/// only evicts old entries, it never blocks a connect.
const TRACKED_CONNECTIONS: u32 = 65_536;

// Every map is pinned by name, so a restarted agent (or programs from a previous run that are
// still attached) shares the same state instead of starting empty.
#[map(name = "PROTECTED")]
static PROTECTED: HashMap<Endpoint, u8> = HashMap::pinned(4096, 0);

#[map(name = "GATEWAY")]
static GATEWAY: Array<Gateway> = Array::pinned(1, 0);

#[map(name = "ORIG_BY_SOCK")]
static ORIG_BY_SOCK: LruHashMap<u64, OriginalDestination> =
    LruHashMap::pinned(TRACKED_CONNECTIONS, 0);

#[map(name = "ORIG_BY_CONN")]
static ORIG_BY_CONN: LruHashMap<ConnKey, OriginalDestination> =
    LruHashMap::pinned(TRACKED_CONNECTIONS, 0);

#[map(name = "ORIG_BY_ACCEPT")]
static ORIG_BY_ACCEPT: LruHashMap<u64, OriginalDestination> =
    LruHashMap::pinned(TRACKED_CONNECTIONS, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(event_kind::COUNT, 0);

#[cgroup_sock_addr(connect4)]
pub fn redirect_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands a valid bpf_sock_addr for the program's lifetime.
    let (word, port, protocol) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).protocol) };
    let dest = Endpoint::from_v4_word(word, user_port_to_host(port));
    match decide(&dest, protocol) {
        Decision::Allow => ALLOW,
        Decision::Refuse => refuse(&ctx, &dest, protocol),
        Decision::Redirect(gateway) => {
            let target = gateway.v4;
            if target.is_unset() {
                return refuse(&ctx, &dest, protocol);
            }
            // SAFETY: as above; user_ip4/user_port are writable in connect4.
            unsafe {
                (*sa).user_ip4 = target.addr[3];
                (*sa).user_port = host_port_to_user(target.port);
            }
            remember(&ctx, &dest, protocol)
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub fn redirect_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: see redirect_connect4.
    let (addr, port, protocol) = unsafe { ((*sa).user_ip6, (*sa).user_port, (*sa).protocol) };
    let dest = Endpoint::new(addr, user_port_to_host(port));
    match decide(&dest, protocol) {
        Decision::Allow => ALLOW,
        Decision::Refuse => refuse(&ctx, &dest, protocol),
        Decision::Redirect(gateway) => {
            // A v4-mapped destination (`::ffff:a.b.c.d` on an AF_INET6 socket) never reaches
            // connect4, so it is handled here and must stay mapped: the kernel then takes its
            // IPv4 path. A native IPv6 destination goes to the IPv6 gateway when there is one.
            let target = if dest.is_v4_mapped() || gateway.v6.is_unset() {
                gateway.v4
            } else {
                gateway.v6
            };
            if target.is_unset() {
                return refuse(&ctx, &dest, protocol);
            }
            // SAFETY: user_ip6/user_port are writable in connect6, word by word.
            unsafe {
                (*sa).user_ip6[0] = target.addr[0];
                (*sa).user_ip6[1] = target.addr[1];
                (*sa).user_ip6[2] = target.addr[2];
                (*sa).user_ip6[3] = target.addr[3];
                (*sa).user_port = host_port_to_user(target.port);
            }
            remember(&ctx, &dest, protocol)
        }
    }
}

#[cgroup_sock_addr(getpeername4)]
pub fn restore_peer4(ctx: SockAddrContext) -> i32 {
    if let Some(original) = original_of(&ctx) {
        let sa = ctx.sock_addr;
        // SAFETY: user_ip4/user_port are writable in getpeername4.
        unsafe {
            (*sa).user_ip4 = original.dest.addr[3];
            (*sa).user_port = host_port_to_user(original.dest.port);
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn restore_peer6(ctx: SockAddrContext) -> i32 {
    if let Some(original) = original_of(&ctx) {
        let sa = ctx.sock_addr;
        // SAFETY: user_ip6/user_port are writable in getpeername6.
        unsafe {
            (*sa).user_ip6[0] = original.dest.addr[0];
            (*sa).user_ip6[1] = original.dest.addr[1];
            (*sa).user_ip6[2] = original.dest.addr[2];
            (*sa).user_ip6[3] = original.dest.addr[3];
            (*sa).user_port = host_port_to_user(original.dest.port);
        }
    }
    ALLOW
}

/// Attached to the pods' cgroups (active side) and, optionally, the gateway's (passive side).
/// The client socket's cookie, under which connect() recorded the original destination, is
/// not the cookie of the socket the gateway accepts; the 4-tuple is what both ends share.
#[sock_ops]
pub fn bridge_established(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // SAFETY: socket cookie of the sock_ops context's socket.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            // SAFETY: LRU values are plain data copied out immediately.
            if let Some(original) = unsafe { ORIG_BY_SOCK.get(&cookie) } {
                let original = *original;
                let (local, remote) = sock_ops_endpoints(&ctx);
                let key = conn_key(&ctx, local, remote);
                let _ = ORIG_BY_CONN.insert(&key, &original, 0);
            }
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let (local, remote) = sock_ops_endpoints(&ctx);
            let key = conn_key(&ctx, remote, local);
            // SAFETY: as above.
            if let Some(original) = unsafe { ORIG_BY_CONN.get(&key) } {
                let original = *original;
                // SAFETY: cookie of the accepted socket, which the gateway reads as SO_COOKIE.
                let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
                let _ = ORIG_BY_ACCEPT.insert(&cookie, &original, 0);
            }
        }
        _ => {}
    }
    // sock_ops verdicts are ignored for these callbacks; 1 is the conventional "ok".
    1
}

/// The last line: whatever did not go through connect() (raw sockets, connections made before
/// the programs were attached, UDP sendmsg, tunnels) still has to leave as a packet.
#[cgroup_skb(egress)]
pub fn drop_protected_egress(ctx: SkBuffContext) -> i32 {
    let Some((dest, protocol)) = packet_destination(&ctx) else {
        return ALLOW;
    };
    if PROTECTED.get_ptr(&dest).is_none() {
        return ALLOW;
    }
    count(event_kind::DROP);
    // SAFETY: the skb pointer is the program's context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    emit(event_kind::DROP, protocol, cgroup_id, &dest);
    REFUSE
}

enum Decision {
    Allow,
    Refuse,
    Redirect(Gateway),
}

fn decide(dest: &Endpoint, protocol: u32) -> Decision {
    let exact = PROTECTED.get_ptr(dest).is_some();
    let address = PROTECTED.get_ptr(&dest.any_port()).is_some();
    if !exact && !address {
        return Decision::Allow;
    }
    // Only TCP to a protected ip:port is redirected; anything else to a protected IP (another
    // port, a connected UDP socket) is refused here rather than left to the packet drop, so the
    // application gets EPERM instead of a hang.
    if exact && protocol == IPPROTO_TCP {
        // SAFETY: a plain-data copy out of the array.
        let configured = unsafe { PROTECTED.get(dest) }.copied() == Some(protected_kind::REDIRECT);
        if configured {
            return match GATEWAY.get(0) {
                Some(gateway) => Decision::Redirect(*gateway),
                None => Decision::Refuse,
            };
        }
    }
    Decision::Refuse
}

fn remember(ctx: &SockAddrContext, dest: &Endpoint, protocol: u32) -> i32 {
    // SAFETY: helpers valid for cgroup/connect*.
    let (cookie, netns_cookie, cgroup_id) = unsafe {
        (
            bpf_get_socket_cookie(ctx.as_ptr()),
            bpf_get_netns_cookie(ctx.as_ptr()),
            bpf_get_current_cgroup_id(),
        )
    };
    let original = OriginalDestination {
        dest: *dest,
        _pad: 0,
        cgroup_id,
        netns_cookie,
    };
    // Without the record the gateway could not tell where the connection was going; refusing
    // is the fail-closed answer (the LRU map never refuses an insert for lack of space).
    if ORIG_BY_SOCK.insert(&cookie, &original, 0).is_err() {
        return refuse(ctx, dest, protocol);
    }
    count(event_kind::REDIRECT);
    emit(event_kind::REDIRECT, protocol, cgroup_id, dest);
    ALLOW
}

fn refuse(_ctx: &SockAddrContext, dest: &Endpoint, protocol: u32) -> i32 {
    count(event_kind::REJECT);
    // SAFETY: helper valid for cgroup/connect*.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    emit(event_kind::REJECT, protocol, cgroup_id, dest);
    REFUSE
}

fn original_of(ctx: &SockAddrContext) -> Option<OriginalDestination> {
    // SAFETY: helper valid for cgroup/getpeername*.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: plain-data copy.
    unsafe { ORIG_BY_SOCK.get(&cookie) }.copied()
}

fn sock_ops_endpoints(ctx: &SockOpsContext) -> (Endpoint, Endpoint) {
    let local_port = ctx.local_port() as u16;
    let remote_port = u16::from_be((ctx.remote_port() >> 16) as u16);
    if ctx.family() == AF_INET6 {
        (
            Endpoint::new(ctx.local_ip6(), local_port),
            Endpoint::new(ctx.remote_ip6(), remote_port),
        )
    } else {
        (
            Endpoint::from_v4_word(ctx.local_ip4(), local_port),
            Endpoint::from_v4_word(ctx.remote_ip4(), remote_port),
        )
    }
}

fn conn_key(ctx: &SockOpsContext, client: Endpoint, server: Endpoint) -> ConnKey {
    let netns_cookie = if is_loopback(&server) {
        // SAFETY: helper valid for sock_ops.
        unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
    } else {
        0
    };
    ConnKey {
        netns_cookie,
        client,
        server,
    }
}

fn is_loopback(endpoint: &Endpoint) -> bool {
    let a = endpoint.addr;
    let v6_loopback =
        a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == u32::from_ne_bytes([0, 0, 0, 1]);
    let v4_loopback = endpoint.is_v4_mapped() && a[3].to_ne_bytes()[0] == 127;
    v6_loopback || v4_loopback
}

/// The destination IP of an outgoing packet as a port-0 `PROTECTED` key, and its protocol.
/// cgroup_skb sees the packet from the network header on.
fn packet_destination(ctx: &SkBuffContext) -> Option<(Endpoint, u32)> {
    let first: u8 = ctx.load(0).ok()?;
    match first >> 4 {
        4 => {
            let protocol: u8 = ctx.load(9).ok()?;
            let daddr: u32 = ctx.load(16).ok()?;
            Some((Endpoint::from_v4_word(daddr, 0), u32::from(protocol)))
        }
        6 => {
            let next_header: u8 = ctx.load(6).ok()?;
            let daddr: [u32; 4] = ctx.load(24).ok()?;
            Some((Endpoint::new(daddr, 0), u32::from(next_header)))
        }
        _ => None,
    }
}

fn count(kind: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

fn emit(kind: u32, protocol: u32, cgroup_id: u64, dest: &Endpoint) {
    let event = Event {
        kind,
        protocol,
        cgroup_id,
        dest: *dest,
        _pad: 0,
    };
    // A full ring buffer loses the event, never the verdict; COUNTERS still counts it.
    let _ = EVENTS.output::<Event>(&event, 0);
}

/// `user_port` holds the port in network order in the low 16 bits of a u32.
fn user_port_to_host(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

fn host_port_to_user(port: u16) -> u32 {
    u32::from(port.to_be())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

// Only non-GPL helpers are used, so the project's own licence applies.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
