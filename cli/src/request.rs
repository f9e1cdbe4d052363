//! `getevents` flags to a `GetEventsRequest`, as `tetra` builds it: one
//! allow filter whose set fields must all match.

use proto::tetragon::{
    CapFilter, CapFilterSet, CapabilitiesType, EventType, FieldFilter, FieldFilterAction, Filter, GetEventsRequest,
};
use proto::wkt::FieldMask;

use crate::args::GetEventsArgs;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("invalid argument for -e: one event type per flag")]
    SeveralEventTypes,
    #[error("invalid argument for -e: unknown event type {0:?}")]
    UnknownEventType(String),
    #[error("invalid argument for --cap: unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("invalid argument for --host-ns: unknown namespace {0:?} (expected one of {names})", names = events::filter::NAMESPACE_NAMES.join(", "))]
    UnknownNamespace(String),
}

/// `CAP_SYS_ADMIN`, `cap_sys_admin` or `SYS_ADMIN`, as `CapabilitiesType`.
fn capability(name: &str) -> Result<CapabilitiesType, RequestError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    // The schema spells capability 1 without the prefix.
    let canonical = if bare == "DAC_OVERRIDE" { bare.to_owned() } else { format!("CAP_{bare}") };
    CapabilitiesType::from_str_name(&canonical).ok_or_else(|| RequestError::UnknownCapability(name.to_owned()))
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
    let caps = args.caps.iter().map(|c| capability(c).map(|c| c as i32)).collect::<Result<Vec<_>, _>>()?;
    if let Some(bad) = args.host_ns.iter().find(|n| !events::filter::NAMESPACE_NAMES.contains(&n.as_str())) {
        return Err(RequestError::UnknownNamespace(bad.clone()));
    }
    let filter = Filter {
        binary_regex: args.processes.clone(),
        namespace: if args.host { vec![String::new()] } else { args.namespaces.clone() },
        namespace_regex: args.namespace_regex.clone(),
        pod_regex: args.pods.clone(),
        event_set,
        policy_names: args.policy_names.clone(),
        capabilities: (!caps.is_empty()).then(|| CapFilter {
            effective: Some(CapFilterSet { any: caps, ..Default::default() }),
            ..Default::default()
        }),
        host_namespaces: args.host_ns.clone(),
        node_name: args.nodes.clone(),
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
    Ok(GetEventsRequest {
        allow_list,
        field_filters,
        since_seconds: args.since.unwrap_or(0),
        last: args.last.unwrap_or(0),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn build_from(flags: &[&str]) -> Result<GetEventsRequest, RequestError> {
        let argv = ["vigil", "getevents"].into_iter().chain(flags.iter().copied());
        let crate::args::Command::GetEvents(args) = crate::args::Cli::try_parse_from(argv).unwrap().command else {
            panic!("not getevents")
        };
        build(&args)
    }

    #[test]
    fn privilege_questions_are_one_flag_each() {
        let r = build_from(&["--cap", "CAP_SYS_ADMIN,net_raw", "--cap", "DAC_OVERRIDE"]).unwrap();
        let any = &r.allow_list[0].capabilities.as_ref().unwrap().effective.as_ref().unwrap().any;
        assert_eq!(
            any,
            &vec![
                CapabilitiesType::CapSysAdmin as i32,
                CapabilitiesType::CapNetRaw as i32,
                CapabilitiesType::DacOverride as i32
            ]
        );
        let r = build_from(&["--host-ns", "net,pid"]).unwrap();
        assert_eq!(r.allow_list[0].host_namespaces, vec!["net", "pid"]);
    }

    #[test]
    fn unknown_names_are_named() {
        assert_eq!(build_from(&["--cap", "CAP_FLY"]).unwrap_err(), RequestError::UnknownCapability("CAP_FLY".into()));
        assert_eq!(
            build_from(&["--host-ns", "network"]).unwrap_err(),
            RequestError::UnknownNamespace("network".into())
        );
    }
}
