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
pub mod resume;
pub mod subject;
mod syscalls_x64;

pub use filter::{EventFilter, FilterError};

/// A `GetEventsRequest`'s compiled filters and field filters.
#[derive(Debug, Default)]
pub struct RequestFilters {
    pub filter: EventFilter,
    pub fields: fields::FieldFilters,
    /// What a resuming client already has (see [`resume`]).
    pub resume: Option<resume::ResumeGate>,
    /// Who asked (the peer's address), for per-client metrics.
    pub client: Option<String>,
}

/// Why a request's filters were refused; names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Fields(#[from] fields::FieldFilterError),
    #[error(transparent)]
    Resume(#[from] resume::ResumeError),
}

impl From<RequestError> for tonic::Status {
    fn from(e: RequestError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

impl RequestFilters {
    pub fn compile(req: &proto::tetragon::GetEventsRequest) -> Result<Self, RequestError> {
        Ok(RequestFilters {
            filter: EventFilter::from_request(req)?,
            fields: fields::FieldFilters::new(&req.field_filters)?,
            resume: resume::ResumeGate::compile(req.resume.as_ref())?,
            client: None,
        })
    }
}
