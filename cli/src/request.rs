//! `getevents` flags to a `GetEventsRequest`, as `tetra` builds it: one
//! allow filter whose set fields must all match.

use proto::tetragon::{EventType, FieldFilter, FieldFilterAction, Filter, GetEventsRequest};
use proto::wkt::FieldMask;

use crate::args::GetEventsArgs;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("invalid argument for -e: one event type per flag")]
    SeveralEventTypes,
    #[error("invalid argument for -e: unknown event type {0:?}")]
    UnknownEventType(String),
}

fn event_type(name: &str) -> Result<EventType, RequestError> {
    if name.contains(',') {
        return Err(RequestError::SeveralEventTypes);
    }
    EventType::from_str_name(name).ok_or_else(|| RequestError::UnknownEventType(name.to_owned()))
}

fn mask(action: FieldFilterAction, fields: &[String]) -> Option<FieldFilter> {
    (!fields.is_empty()).then(|| FieldFilter {
        event_set: vec![],
        fields: Some(FieldMask { paths: fields.to_vec() }),
        action: action as i32,
        invert_event_set: None,
    })
}

/// Builds the request the flags describe.
pub fn build(args: &GetEventsArgs) -> Result<GetEventsRequest, RequestError> {
    let event_set = args.event_types.iter().map(|e| event_type(e).map(|t| t as i32)).collect::<Result<Vec<_>, _>>()?;
    let filter = Filter {
        binary_regex: args.processes.clone(),
        namespace: if args.host { vec![String::new()] } else { args.namespaces.clone() },
        namespace_regex: args.namespace_regex.clone(),
        pod_regex: args.pods.clone(),
        event_set,
        policy_names: args.policy_names.clone(),
        ..Default::default()
    };
    let allow_list = if filter == Filter::default() { vec![] } else { vec![filter] };
    let field_filters = [
        mask(FieldFilterAction::Include, &args.include_fields),
        mask(FieldFilterAction::Exclude, &args.exclude_fields),
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(GetEventsRequest { allow_list, deny_list: vec![], aggregation_options: None, field_filters })
}
