//! Incremental parsers for upgraded streams (WebSocket with the Kubernetes channel protocol,
//! SPDY/3.1): pure, chunk-boundary safe, never panic on garbage.
