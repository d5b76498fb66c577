//! Map keys and values shared by the kernel-side programs (`ebpf/portcullis-ebpf`) and the node
//! agent (`portcullis::redirect`). Owns the byte layout of every map entry and the map names.
//! Must never hold logic: both sides compile it, one of them without `std` and without a heap.
//!
//! Conventions, chosen so the kernel side never converts what it reads from a context:
//! - addresses are four `u32` words whose *memory* bytes are the address in network order (the
//!   layout of `bpf_sock_addr.user_ip6`); an IPv4 address is stored in its IPv4-mapped IPv6 form
//!   (`::ffff:a.b.c.d`), so one key type covers both families;
//! - ports are in host order;
//! - padding is explicit and always zero, because map keys are compared as raw bytes.

#![no_std]

/// Map names, also the file names of their pins under the agent's bpffs directory.
pub mod map_names {
    pub const PROTECTED: &str = "PROTECTED";
    pub const GATEWAY: &str = "GATEWAY";
    pub const ORIG_BY_SOCK: &str = "ORIG_BY_SOCK";
    pub const ORIG_BY_CONN: &str = "ORIG_BY_CONN";
    pub const ORIG_BY_ACCEPT: &str = "ORIG_BY_ACCEPT";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
}

/// Program names in the object, which are also the file names of their link pins per cgroup.
pub mod program_names {
    pub const CONNECT4: &str = "redirect_connect4";
    pub const CONNECT6: &str = "redirect_connect6";
    pub const GETPEERNAME4: &str = "restore_peer4";
    pub const GETPEERNAME6: &str = "restore_peer6";
    pub const SOCK_OPS: &str = "bridge_established";
    pub const EGRESS: &str = "drop_protected_egress";
}

/// The second word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), in memory order.
pub const V4_MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// An IP address and port, the key of `PROTECTED` and part of most values.
///
/// In `PROTECTED`, an entry with `port == 0` means "this IP is protected on every port and
/// protocol"; the agent writes one for every protected IP next to its `ip:port` entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u32; 4],
    pub port: u16,
    pub _pad: u16,
}

impl Endpoint {
    pub const fn new(addr: [u32; 4], port: u16) -> Self {
        Self {
            addr,
            port,
            _pad: 0,
        }
    }

    /// An IPv4 address as read from `user_ip4` / `remote_ip4` (network order in memory).
    pub const fn from_v4_word(word: u32, port: u16) -> Self {
        Self::new([0, 0, V4_MAPPED_PREFIX_WORD, word], port)
    }

    /// The same address on port 0: the "whole IP is protected" key.
    pub const fn any_port(self) -> Self {
        Self::new(self.addr, 0)
    }

    pub const fn is_v4_mapped(&self) -> bool {
        self.addr[0] == 0 && self.addr[1] == 0 && self.addr[2] == V4_MAPPED_PREFIX_WORD
    }

    pub const fn is_unset(&self) -> bool {
        self.port == 0
    }
}

/// Values of `PROTECTED`.
pub mod protected_kind {
    /// `ip:port` that connect() rewrites to the gateway.
    pub const REDIRECT: u8 = 1;
    /// Port-0 entry: the IP is protected; anything else to it is refused or dropped.
    pub const ADDRESS: u8 = 2;
}

/// The single entry of `GATEWAY`: where redirected connections go. `v4` is in mapped form;
/// `v6` may be unset (port 0), then IPv6 sockets are sent to `v4` as `::ffff:a.b.c.d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gateway {
    pub v4: Endpoint,
    pub v6: Endpoint,
}

/// What connect() was asked for before the rewrite, and who asked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDestination {
    pub dest: Endpoint,
    pub _pad: u32,
    /// cgroup v2 id of the client socket's cgroup: which pod this is.
    pub cgroup_id: u64,
    /// Network namespace cookie of the client socket.
    pub netns_cookie: u64,
}

/// A TCP connection as seen from the client: its own address, then the gateway's.
///
/// `netns_cookie` is non-zero only for loopback connections: a loopback 4-tuple is only unique
/// inside one network namespace (every pod has its own 127.0.0.1), while any other 4-tuple is
/// seen identically by the client and the gateway, which may live in different namespaces.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub netns_cookie: u64,
    pub client: Endpoint,
    pub server: Endpoint,
}

/// Kinds of `Event`, also the indexes of `COUNTERS`.
pub mod event_kind {
    /// connect() to a protected `ip:port` rewritten to the gateway.
    pub const REDIRECT: u32 = 0;
    /// connect() refused: protected IP on another port, a UDP connect, or no gateway configured.
    pub const REJECT: u32 = 1;
    /// Egress packet to a protected IP dropped (it did not go through the rewrite).
    pub const DROP: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// One redirect, reject or drop, sent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    /// IPPROTO_* of the socket or packet (0 when unknown).
    pub protocol: u32,
    pub cgroup_id: u64,
    pub dest: Endpoint,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: every type is `repr(C)`, `Copy`, made only of integers with explicit padding, so
    // any bit pattern is valid and none has implicit padding bytes.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::Gateway {}
    unsafe impl aya::Pod for super::OriginalDestination {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::Event {}
}
