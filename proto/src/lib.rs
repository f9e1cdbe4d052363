//! Tetragon-compatible API types for Vigil.
//!
//! The `.proto` files under `proto/` are Vigil's own, written from the
//! reference schema with Tetragon's names and field numbers, so the wire
//! format and the protojson rendering match what Tetragon clients expect.
#![forbid(unsafe_code)]

/// A module of generated code, with its lint waivers stated once.
macro_rules! generated {
    ($(#[$doc:meta])* $vis:vis mod $name:ident { $($body:tt)* }) => {
        $(#[$doc])*
        #[allow(
            clippy::all,
            clippy::pedantic,
            clippy::allow_attributes_without_reason,
            clippy::unwrap_used,
            missing_docs,
            reason = "generated code"
        )]
        $vis mod $name { $($body)* }
    };
}

pub mod ingest;
pub mod json;
pub mod kinds;
pub mod shared;
mod timestamp;

pub use timestamp::Timestamp;

/// The event proto's own unit tests build (test-support depends on proto,
/// so it cannot serve proto's tests).
#[cfg(test)]
pub(crate) fn test_exec(binary: &str) -> tetragon::GetEventsResponse {
    use tetragon::{GetEventsResponse, Process, ProcessExec, get_events_response::Event};
    GetEventsResponse {
        event: Some(Event::ProcessExec(ProcessExec {
            process: Some(Process { binary: binary.into(), ..Default::default() }),
            ..Default::default()
        })),
        node_name: "n".into(),
        ..Default::default()
    }
}

generated! {
    /// Generated messages, enums and gRPC stubs of package `tetragon`.
    pub mod tetragon {
        include!(concat!(env!("OUT_DIR"), "/tetragon.rs"));
        include!(concat!(env!("OUT_DIR"), "/tetragon.serde.rs"));
    }
}

generated! {
    /// Vigil's own packages: sensor → relay ingest and relay admin.
    pub mod vigil {
        /// `tetragon.KprobeArgument`'s oneof alone, for its protojson (see `json`).
        pub(crate) mod json {
            include!(concat!(env!("OUT_DIR"), "/vigil.json.rs"));
            include!(concat!(env!("OUT_DIR"), "/vigil.json.serde.rs"));
        }
        pub mod relay {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/vigil.relay.v1.rs"));
                include!(concat!(env!("OUT_DIR"), "/vigil.relay.v1.serde.rs"));
            }
        }
    }
}

/// Encoded `FileDescriptorSet` of every `.proto` file, for gRPC reflection
/// and for tests that check field numbers.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

pub use pbjson_types as wkt;
