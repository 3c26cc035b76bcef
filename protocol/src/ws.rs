//! The WebSocket limits of the panel–agent connection, the same on both ends (feature `ws`).
//!
//! Small buffers and the protocol's message limit: tungstenite allocates its read buffer
//! eagerly at `read_buffer_size` (128 KiB by default), so 4 KiB here is what keeps an idle
//! connection small on a hub holding thousands of them (the panel's `fleet::hub` docs do the
//! arithmetic); there is no write buffer (frames go straight to TLS); and no message or frame
//! may exceed [`MAX_MESSAGE_BYTES`].

use tungstenite::protocol::WebSocketConfig;

use crate::messages::MAX_MESSAGE_BYTES;

/// tungstenite's read buffer, allocated when the connection opens.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Frames are not buffered before they are written.
pub const WRITE_BUFFER_BYTES: usize = 0;
/// The most that may wait unwritten: one largest message plus framing slack.
pub const MAX_WRITE_BUFFER_BYTES: usize = MAX_MESSAGE_BYTES + 64 * 1024;

/// The configuration both the hub and the agent open their WebSocket with.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_the_protocol_ones() {
        let c = ws_config();
        assert_eq!(c.read_buffer_size, 4 * 1024);
        assert_eq!(c.write_buffer_size, 0);
        assert_eq!(c.max_write_buffer_size, 256 * 1024 + 64 * 1024);
        assert_eq!(c.max_message_size, Some(MAX_MESSAGE_BYTES));
        assert_eq!(c.max_frame_size, Some(MAX_MESSAGE_BYTES));
        // tungstenite refuses a write buffer cap not above the write buffer itself.
        assert!(c.max_write_buffer_size > c.write_buffer_size);
    }
}
