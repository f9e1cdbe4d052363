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

/// A `GetEventsRequest`'s compiled filters and field filters; the error
/// names the field at fault (servers answer it as INVALID_ARGUMENT).
pub fn request_filters(req: &proto::tetragon::GetEventsRequest) -> Result<(EventFilter, fields::FieldFilters), String> {
    let filter = EventFilter::from_request(req).map_err(|e| e.to_string())?;
    let fields = fields::FieldFilters::new(&req.field_filters).map_err(|e| e.to_string())?;
    Ok((filter, fields))
}
