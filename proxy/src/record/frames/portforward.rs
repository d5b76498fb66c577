//! Port-forward over WebSocket (`v4.portforward.k8s.io`): binary messages whose first byte is a
//! channel, channel 2i carrying the data and 2i+1 the errors of the i-th requested port. The
//! server starts each channel with the port number (2 bytes, little-endian); that is how the
//! decoder learns which port a channel is.
//!
//! Owns turning those messages into port-forward events. Client data that arrives before the
//! server named its channel's port waits in a capped buffer; nothing else is held back.

use std::collections::HashMap;

use super::channel::close_reason;
use super::websocket::MessageSink;
use super::{Direction, EventSink, FrameError, StreamEvent};

/// Client bytes allowed ahead of the server's port announcement, and the longest error text.
const MAX_PENDING: usize = 64 * 1024;

#[derive(Default)]
struct ChannelState {
    port: Option<u16>,
    prefix: [u8; 2],
    prefix_len: usize,
    pending: Vec<u8>,
    error_text: Vec<u8>,
}

/// Port-forward state of one WebSocket connection.
pub(super) struct PortForwardSession {
    pub(super) capture_data: bool,
    channels: HashMap<u8, ChannelState>,
    /// The channel of each direction's current message; `None` before its first byte.
    current: [Option<u8>; 2],
}

impl Default for PortForwardSession {
    fn default() -> Self {
        Self {
            capture_data: true,
            channels: HashMap::new(),
            current: [None; 2],
        }
    }
}

impl PortForwardSession {
    pub(super) fn sink<'a>(
        &'a mut self,
        dir: Direction,
        events: &'a mut dyn EventSink,
    ) -> PortForwardSink<'a> {
        PortForwardSink {
            session: self,
            dir,
            events,
        }
    }
}

pub(super) struct PortForwardSink<'a> {
    session: &'a mut PortForwardSession,
    dir: Direction,
    events: &'a mut dyn EventSink,
}

impl PortForwardSink<'_> {
    fn too_large(&self, what: &'static str) -> FrameError {
        FrameError::TooLarge {
            peer: self.dir.peer(),
            what,
            limit: MAX_PENDING,
        }
    }

    fn server_data(&mut self, channel: u8, mut bytes: &[u8]) -> Result<(), FrameError> {
        let capture = self.session.capture_data;
        let state = self.session.channels.entry(channel).or_default();
        if state.port.is_none() {
            let take = (2 - state.prefix_len).min(bytes.len());
            state.prefix[state.prefix_len..state.prefix_len + take].copy_from_slice(&bytes[..take]);
            state.prefix_len += take;
            bytes = &bytes[take..];
            if state.prefix_len < 2 {
                return Ok(());
            }
            let port = u16::from_le_bytes(state.prefix);
            state.port = Some(port);
            if channel.is_multiple_of(2) {
                self.events.push(StreamEvent::PortForwardOpened {
                    port,
                    request_id: None,
                });
                let pending = std::mem::take(&mut state.pending);
                self.events
                    .port_forward(port, None, Direction::ClientToServer, &pending, capture);
            }
        }
        let Some(port) = state.port else {
            return Ok(());
        };
        if channel.is_multiple_of(2) {
            self.events
                .port_forward(port, None, Direction::ServerToClient, bytes, capture);
            return Ok(());
        }
        if state.error_text.len() + bytes.len() > MAX_PENDING {
            return Err(self.too_large("a port-forward error message"));
        }
        state.error_text.extend_from_slice(bytes);
        Ok(())
    }

    fn client_data(&mut self, channel: u8, bytes: &[u8]) -> Result<(), FrameError> {
        if channel % 2 == 1 {
            // Clients never write error channels and the kubelet reads nothing from them.
            return Ok(());
        }
        let capture = self.session.capture_data;
        let state = self.session.channels.entry(channel).or_default();
        match state.port {
            Some(port) => {
                self.events
                    .port_forward(port, None, Direction::ClientToServer, bytes, capture);
                Ok(())
            }
            None if state.pending.len() + bytes.len() > MAX_PENDING => {
                Err(self.too_large("port-forward data ahead of the port announcement"))
            }
            None => {
                state.pending.extend_from_slice(bytes);
                Ok(())
            }
        }
    }
}

impl MessageSink for PortForwardSink<'_> {
    fn start(&mut self, _text: bool) -> Result<(), FrameError> {
        self.session.current[self.dir.index()] = None;
        Ok(())
    }

    fn data(&mut self, mut bytes: &[u8]) -> Result<(), FrameError> {
        let slot = self.dir.index();
        let channel = match self.session.current[slot] {
            Some(channel) => channel,
            None => {
                let Some((&channel, rest)) = bytes.split_first() else {
                    return Ok(());
                };
                self.session.current[slot] = Some(channel);
                bytes = rest;
                channel
            }
        };
        if bytes.is_empty() {
            return Ok(());
        }
        match self.dir {
            Direction::ServerToClient => self.server_data(channel, bytes),
            Direction::ClientToServer => self.client_data(channel, bytes),
        }
    }

    fn end(&mut self) -> Result<(), FrameError> {
        let Some(channel) = self.session.current[self.dir.index()].take() else {
            return Ok(());
        };
        if self.dir == Direction::ServerToClient && channel % 2 == 1 {
            if let Some(state) = self.session.channels.get_mut(&channel) {
                if let (Some(port), false) = (state.port, state.error_text.is_empty()) {
                    let text = std::mem::take(&mut state.error_text);
                    self.events.push(StreamEvent::PortForwardError {
                        port,
                        message: String::from_utf8_lossy(&text).into_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    fn close(&mut self, code: Option<u16>, reason: &str) -> Result<(), FrameError> {
        self.events.push(StreamEvent::Closed {
            reason: close_reason(self.dir, code, reason),
        });
        Ok(())
    }
}
