//! `vigil getevents`: stream events from a server or standard input,
//! filter them like the server would, and print JSON or compact lines.

use std::io::{BufRead, Write};
use std::time::Duration;

use events::compact::{self, CompactOptions};
use events::fields::FieldFilters;
use events::filter::EventFilter;
use events::resume::ResumeTracker;
use proto::json::{from_json_line, to_json_line};
use proto::tetragon::fine_guidance_sensors_client::FineGuidanceSensorsClient;
use proto::tetragon::get_events_response::Event;
use proto::tetragon::{GetEventsRequest, GetEventsResponse};

use crate::args::Output;
use crate::target::Target;

/// Formats events to a writer.
pub struct Printer<W: Write> {
    out: W,
    output: Output,
    compact: CompactOptions,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, output: Output, compact: CompactOptions) -> Self {
        Printer { out, output, compact }
    }

    /// Writes one event; loss notices also go to stderr in compact mode,
    /// where tetra would print nothing for them.
    pub fn print(&mut self, event: &GetEventsResponse) -> std::io::Result<()> {
        match self.output {
            Output::Json => writeln!(self.out, "{}", to_json_line(event))?,
            Output::Compact => match compact::render(event, self.compact) {
                Some(line) => writeln!(self.out, "{line}")?,
                None => {
                    if let Some(Event::RateLimitInfo(info)) = &event.event {
                        eprintln!(
                            "vigil: {} events were dropped before reaching this client",
                            info.number_of_dropped_process_events
                        );
                    }
                }
            },
        }
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Server-side request semantics, applied locally to events read from a file.
pub struct LocalFilter {
    filter: EventFilter,
    fields: FieldFilters,
}

impl LocalFilter {
    pub fn new(req: &GetEventsRequest) -> anyhow::Result<Self> {
        let events::RequestFilters { filter, fields, .. } = events::RequestFilters::compile(req)?;
        Ok(LocalFilter { filter, fields })
    }

    pub fn apply(&self, event: GetEventsResponse) -> Option<GetEventsResponse> {
        self.filter.matches(&event).then(|| self.fields.apply(event))
    }
}

/// Reads JSON lines; a bad line is reported with its number and skipped.
/// Returns how many lines could not be parsed.
pub fn from_reader<R: BufRead, W: Write>(
    input: R,
    filter: &LocalFilter,
    printer: &mut Printer<W>,
    errors: &mut dyn Write,
) -> std::io::Result<usize> {
    let mut input = input;
    let mut bad = 0;
    let mut raw = Vec::new();
    for number in 1.. {
        raw.clear();
        // Bytes, not `lines()`: a line that is not UTF-8 is one bad line,
        // not the end of the input.
        if input.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        let line = match std::str::from_utf8(&raw) {
            Ok(l) => l,
            Err(e) => {
                bad += 1;
                writeln!(errors, "vigil: line {number}: not valid UTF-8 (at byte {})", e.valid_up_to())?;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match from_json_line(line) {
            Ok(event) => {
                if let Some(event) = filter.apply(event) {
                    printer.print(&event)?;
                }
            }
            Err(e) => {
                bad += 1;
                writeln!(errors, "vigil: line {number}: invalid event JSON: {e}")?;
            }
        }
    }
    Ok(bad)
}

/// Streams from a server until it ends; with `reconnect`, retries with
/// capped exponential backoff, resuming exactly after the last event
/// received (see [`events::resume`]): nothing twice, nothing skipped.
pub async fn from_server<W: Write>(
    target: &Target,
    request: GetEventsRequest,
    printer: &mut Printer<W>,
    reconnect: bool,
) -> anyhow::Result<()> {
    let address = &target.address;
    let mut backoff = Duration::from_millis(500);
    let mut received = ResumeTracker::default();
    loop {
        let mut this_time = request.clone();
        if !received.is_empty() {
            this_time.resume = Some(received.resume_from());
        }
        let result = stream_once(target, this_time, printer, &mut received).await;
        match result {
            Ok(()) if !reconnect => return Ok(()),
            Err(e) if !reconnect => return Err(e),
            Ok(()) => eprintln!("vigil: stream from {address} ended; reconnecting in {backoff:?}"),
            Err(e) => eprintln!("vigil: {e:#}; reconnecting in {backoff:?}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn stream_once<W: Write>(
    target: &Target,
    request: GetEventsRequest,
    printer: &mut Printer<W>,
    received: &mut ResumeTracker,
) -> anyhow::Result<()> {
    let channel = target.channel().await?;
    let mut client = FineGuidanceSensorsClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = client.get_events(request).await.map_err(status_error)?.into_inner();
    while let Some(event) = stream.message().await.map_err(status_error)? {
        printer.print(&event)?;
        received.record(&event);
    }
    Ok(())
}

/// A gRPC status as a one-line error naming the code.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("server said {:?}: {}", s.code(), s.message())
}
