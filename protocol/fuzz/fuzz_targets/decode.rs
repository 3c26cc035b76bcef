//! Both decoders on arbitrary UTF-8: they must return `Ok` or `Err`, never panic, overflow
//! the stack or allocate without bound; and whatever they accept must survive a round trip
//! (re-encoding may only fail for size: `1e5` comes back as `100000.0`, so a message just
//! under the limit can grow past it).
//!
//! Run with `cargo +nightly fuzz run decode` from `protocol/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mpanel_protocol::messages::{AgentMessage, PanelMessage, ProtocolError};

fuzz_target!(|text: &str| {
    if let Ok(message) = AgentMessage::decode(text) {
        match message.encode() {
            Ok(again) => assert_eq!(AgentMessage::decode(&again).expect("re-decodes"), message),
            Err(e) => assert!(matches!(e, ProtocolError::TooLarge { .. }), "{e}"),
        }
    }
    if let Ok(message) = PanelMessage::decode(text) {
        match message.encode() {
            Ok(again) => assert_eq!(PanelMessage::decode(&again).expect("re-decodes"), message),
            Err(e) => assert!(matches!(e, ProtocolError::TooLarge { .. }), "{e}"),
        }
    }
});
