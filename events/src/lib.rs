//! What the sensor, the relay and the CLI share about events: which
//! process an event is about, the `GetEventsRequest` filter semantics, field
//! filters, `tetra`'s compact text format, and the bounded fan-out bus. One implementation, used by
//! all three, so a filter or a line of output means the same everywhere.
#![forbid(unsafe_code)]

pub mod bus;
pub mod compact;
pub mod fields;
pub mod filter;
pub mod labels;
pub mod subject;

pub use filter::{EventFilter, FilterError};
