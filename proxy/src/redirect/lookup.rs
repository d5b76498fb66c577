//! The gateway's side of the redirect: where was an accepted connection really going?
//!
//! Reads the maps the node agent pinned (read-only use; it never writes them). Two keys, tried
//! in order: the accepted socket's `SO_COOKIE` (filed by `sock_ops` when the gateway's cgroup
//! is configured as `gateway_cgroup`), then the connection's two addresses (filed by `sock_ops`
//! in the pod's cgroup), which is enough whenever the pod's address reaches the gateway
//! un-NATed, as on a node.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use aya::maps::{HashMap, Map, MapData};
use portcullis_ebpf_common::{map_names, ConnKey, OriginalDestination as RawOriginal};

use super::entries::{endpoint, is_loopback, socket_addr};
use super::RedirectError;

/// Where a redirected connection was going, and which cgroup (pod) opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalDestination {
    pub destination: SocketAddr,
    /// The client socket's cgroup v2 id (a container cgroup inside the pod's).
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub matched_by: MatchedBy,
}

/// Which record answered: useful when diagnosing a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// The accepted socket's SO_COOKIE (the gateway's cgroup has `sock_ops` attached).
    AcceptedSocketCookie,
    /// The connection's peer and local addresses.
    Addresses,
}

impl OriginalDestination {
    fn from_raw(raw: RawOriginal, matched_by: MatchedBy) -> Self {
        Self {
            destination: socket_addr(&raw.dest),
            cgroup_id: raw.cgroup_id,
            netns_cookie: raw.netns_cookie,
            matched_by,
        }
    }
}

/// Open handles on the pinned lookup maps; open once, query per accepted connection.
pub struct OriginalDestinations {
    by_conn: HashMap<MapData, ConnKey, RawOriginal>,
    by_accept: HashMap<MapData, u64, RawOriginal>,
}

impl OriginalDestinations {
    /// `pin_dir` is the agent's `bpffs` directory (`/sys/fs/bpf/portcullis` by default).
    pub fn open(pin_dir: &Path) -> Result<Self, RedirectError> {
        Ok(Self {
            by_conn: open_hash(pin_dir, map_names::ORIG_BY_CONN)?,
            by_accept: open_hash(pin_dir, map_names::ORIG_BY_ACCEPT)?,
        })
    }

    /// The original destination of an accepted connection: `socket` is the accepted socket,
    /// `peer` and `local` its two addresses (as from `accept`/`getsockname`). `Ok(None)` means
    /// the connection was not redirected by the agent.
    pub fn lookup(
        &self,
        socket: BorrowedFd<'_>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Option<OriginalDestination>, RedirectError> {
        let cookie = socket_option_u64(socket, libc::SO_COOKIE);
        let netns_cookie = if is_loopback(&local) {
            socket_option_u64(socket, libc::SO_NETNS_COOKIE)
        } else {
            Some(0)
        };
        self.lookup_with(cookie, netns_cookie, peer, local)
    }

    /// The same for callers that hold the socket's cookie rather than its fd (pingora's
    /// `SocketDigest::socket_cookie()`). Loopback connections are then found only by cookie:
    /// their address record also needs the namespace cookie, which only the fd can give.
    pub fn lookup_by_cookie_and_addresses(
        &self,
        socket_cookie: Option<u64>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Option<OriginalDestination>, RedirectError> {
        let netns_cookie = (!is_loopback(&local)).then_some(0);
        self.lookup_with(socket_cookie, netns_cookie, peer, local)
    }

    fn lookup_with(
        &self,
        socket_cookie: Option<u64>,
        netns_cookie: Option<u64>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Result<Option<OriginalDestination>, RedirectError> {
        if let Some(cookie) = socket_cookie {
            if let Some(found) = get(&self.by_accept, &cookie)? {
                return Ok(Some(OriginalDestination::from_raw(
                    found,
                    MatchedBy::AcceptedSocketCookie,
                )));
            }
        }
        // Loopback 4-tuples repeat in every network namespace; sock_ops filed them with the
        // namespace's cookie, which both ends of a loopback connection share.
        let Some(netns_cookie) = netns_cookie else {
            return Ok(None);
        };
        let key = ConnKey {
            netns_cookie,
            client: endpoint(peer),
            server: endpoint(local),
        };
        Ok(get(&self.by_conn, &key)?
            .map(|raw| OriginalDestination::from_raw(raw, MatchedBy::Addresses)))
    }
}

/// One-shot convenience: opens the pinned maps and looks one connection up.
pub fn original_destination(
    pin_dir: &Path,
    socket: BorrowedFd<'_>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Option<OriginalDestination>, RedirectError> {
    OriginalDestinations::open(pin_dir)?.lookup(socket, peer, local)
}

pub(crate) fn open_hash<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &str,
) -> Result<HashMap<MapData, K, V>, RedirectError> {
    let path = pin_dir.join("maps").join(name);
    let map_error = |error: aya::maps::MapError| RedirectError::Map {
        what: format!("open pinned map {}", path.display()),
        error: error.into(),
    };
    let data = MapData::from_pin(&path).map_err(map_error)?;
    let map = Map::from_map_data(data).map_err(map_error)?;
    HashMap::try_from(map).map_err(map_error)
}

fn get<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    key: &K,
) -> Result<Option<V>, RedirectError> {
    match map.get(key, 0) {
        Ok(value) => Ok(Some(value)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(error) => Err(RedirectError::Map {
            what: "look up an original destination".into(),
            error: error.into(),
        }),
    }
}

/// `getsockopt(SOL_SOCKET, option)` for the u64 cookies; `None` on any error.
fn socket_option_u64(socket: BorrowedFd<'_>, option: libc::c_int) -> Option<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `value` and `len` outlive the call and `len` is the size of `value`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(value)
}

#[cfg(test)]
mod tests {
    /// The gateway keeps one handle and queries it from every worker thread.
    #[test]
    fn lookups_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::OriginalDestinations>();
    }
}
