//! Field filters (`-f`/`-F`, `GetEventsRequest.field_filters`): keep or drop
//! field-mask paths of the event's inner message (`process.binary`,
//! `parent`, …), for the event kinds each filter names.

use proto::tetragon::{EventType, FieldFilter, FieldFilterAction, GetEventsResponse};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FieldFilterError {
    #[error("unknown event type {0} in field_filters.event_set")]
    EventType(i32),
    #[error("unknown action {0} in field_filters.action")]
    Action(i32),
    #[error("empty path in field_filters.fields")]
    EmptyPath,
}

#[derive(Debug, Clone)]
struct Compiled {
    event_set: Vec<i32>,
    invert: bool,
    include: bool,
    paths: Vec<Vec<String>>,
}

/// A request's field filters, applied in order.
#[derive(Debug, Clone, Default)]
pub struct FieldFilters(Vec<Compiled>);

impl FieldFilters {
    pub fn new(filters: &[FieldFilter]) -> Result<Self, FieldFilterError> {
        let mut out = Vec::new();
        for f in filters {
            for e in &f.event_set {
                EventType::try_from(*e).map_err(|_| FieldFilterError::EventType(*e))?;
            }
            let action = FieldFilterAction::try_from(f.action).map_err(|_| FieldFilterError::Action(f.action))?;
            let mut paths = Vec::new();
            for p in f.fields.as_ref().map(|m| m.paths.as_slice()).unwrap_or_default() {
                // A mask entry may hold several comma-separated paths, as
                // tetra's -f flag passes them.
                for p in p.split(',') {
                    let p = p.trim();
                    if p.is_empty() {
                        return Err(FieldFilterError::EmptyPath);
                    }
                    paths.push(p.split('.').map(str::to_owned).collect());
                }
            }
            out.push(Compiled {
                event_set: f.event_set.clone(),
                invert: f.invert_event_set.is_some_and(|b| b.value),
                include: action == FieldFilterAction::Include,
                paths,
            });
        }
        Ok(FieldFilters(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What one subscriber sends of a shared event: the shared event itself
    /// (encoded once for everyone) when there is nothing to apply, else its
    /// own filtered copy.
    pub fn apply_shared(&self, event: std::sync::Arc<proto::shared::SharedEvent>) -> proto::shared::OutEvent {
        if self.is_empty() { proto::shared::OutEvent::Shared(event) } else { self.apply(event.event().clone()).into() }
    }

    /// Applies every filter whose event set covers the event. Returns the
    /// event unchanged when none applies.
    pub fn apply(&self, event: GetEventsResponse) -> GetEventsResponse {
        if self.0.is_empty() {
            return event;
        }
        let kind = event.event_type() as i32;
        let Some(inner) = event.event.as_ref() else {
            return event;
        };
        let name = inner.json_name();
        let Ok(mut json) = serde_json::to_value(&event) else {
            return event;
        };
        let Some(body) = json.get_mut(name) else {
            return event;
        };
        for f in &self.0 {
            let covered = f.event_set.is_empty() || f.event_set.contains(&kind);
            if covered == f.invert {
                continue;
            }
            if f.include {
                *body = include(body, &f.paths);
            } else {
                for p in &f.paths {
                    exclude(body, p);
                }
            }
        }
        serde_json::from_value(json).unwrap_or(event)
    }
}

fn include(value: &Value, paths: &[Vec<String>]) -> Value {
    let Value::Object(obj) = value else {
        return value.clone();
    };
    let mut out = Map::new();
    for (key, v) in obj {
        let here: Vec<&Vec<String>> = paths.iter().filter(|p| p.first() == Some(key)).collect();
        if here.is_empty() {
            continue;
        }
        if here.iter().any(|p| p.len() == 1) {
            out.insert(key.clone(), v.clone());
        } else {
            let rest: Vec<Vec<String>> = here.iter().map(|p| p[1..].to_vec()).collect();
            out.insert(key.clone(), include(v, &rest));
        }
    }
    Value::Object(out)
}

fn exclude(value: &mut Value, path: &[String]) {
    let Value::Object(obj) = value else { return };
    match path {
        [] => {}
        [last] => {
            obj.remove(last);
        }
        [first, rest @ ..] => {
            if let Some(v) = obj.get_mut(first) {
                exclude(v, rest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::json::{from_json_line, to_json_line};
    use proto::wkt::FieldMask;

    const EXEC: &str = r#"{"process_exec":{"process":{"pid":5,"binary":"/bin/ls","arguments":"-l"},"parent":{"pid":1,"binary":"/bin/sh"}},"node_name":"n"}"#;
    const EXIT: &str = r#"{"process_exit":{"process":{"pid":5,"binary":"/bin/ls"},"status":3},"node_name":"n"}"#;

    fn mask(paths: &[&str], action: FieldFilterAction, kinds: &[EventType]) -> FieldFilter {
        FieldFilter {
            event_set: kinds.iter().map(|k| *k as i32).collect(),
            fields: Some(FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() }),
            action: action as i32,
            invert_event_set: None,
        }
    }

    #[test]
    fn include_keeps_only_named_paths() {
        let f = FieldFilters::new(&[mask(&["process.binary,parent"], FieldFilterAction::Include, &[])]).unwrap();
        let out = to_json_line(&f.apply(from_json_line(EXEC).unwrap()));
        assert_eq!(
            out,
            r#"{"process_exec":{"process":{"binary":"/bin/ls"},"parent":{"pid":1,"binary":"/bin/sh"}},"node_name":"n"}"#
        );
    }

    #[test]
    fn exclude_only_for_named_kinds() {
        let f = FieldFilters::new(&[mask(
            &["process.arguments", "parent"],
            FieldFilterAction::Exclude,
            &[EventType::ProcessExec],
        )])
        .unwrap();
        let out = to_json_line(&f.apply(from_json_line(EXEC).unwrap()));
        assert_eq!(out, r#"{"process_exec":{"process":{"pid":5,"binary":"/bin/ls"}},"node_name":"n"}"#);
        let exit = from_json_line(EXIT).unwrap();
        assert_eq!(f.apply(exit.clone()), exit);
    }

    #[test]
    fn bad_filters_are_named() {
        let mut m = mask(&["process"], FieldFilterAction::Include, &[]);
        m.action = 7;
        assert_eq!(FieldFilters::new(&[m]).unwrap_err(), FieldFilterError::Action(7));
        let m = mask(&["process,"], FieldFilterAction::Include, &[]);
        assert_eq!(FieldFilters::new(&[m]).unwrap_err(), FieldFilterError::EmptyPath);
    }
}
