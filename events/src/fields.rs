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
    #[error("field_filters.fields path {0:?} names no field of the events it applies to")]
    UnknownPath(String),
}

/// The longest path quoted back in an error.
const QUOTED_PATH: usize = 100;

/// The event schema, for checking paths: message name → its fields (name,
/// message type if any, whether it is a map).
mod schema {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use prost::Message;
    use prost_types::field_descriptor_proto::Type;

    pub struct Field {
        pub name: String,
        pub number: i32,
        pub message: Option<String>,
    }

    pub struct Schema {
        pub messages: HashMap<String, Vec<Field>>,
        pub maps: std::collections::HashSet<String>,
    }

    pub fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| {
            let mut messages = HashMap::new();
            let mut maps = std::collections::HashSet::new();
            // Compiled into the binary by proto's build script: it decodes.
            let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
            fn walk(
                prefix: &str,
                m: &prost_types::DescriptorProto,
                messages: &mut HashMap<String, Vec<Field>>,
                maps: &mut std::collections::HashSet<String>,
            ) {
                let name = format!("{prefix}.{}", m.name());
                if m.options.as_ref().is_some_and(|o| o.map_entry()) {
                    maps.insert(name.clone());
                }
                let fields = m
                    .field
                    .iter()
                    .map(|f| Field {
                        name: f.name().to_owned(),
                        number: f.number(),
                        message: (f.r#type() == Type::Message).then(|| f.type_name().to_owned()),
                    })
                    .collect();
                for nested in &m.nested_type {
                    walk(&name, nested, messages, maps);
                }
                messages.insert(name, fields);
            }
            for file in &set.file {
                let prefix = format!(".{}", file.package());
                for m in &file.message_type {
                    walk(&prefix, m, &mut messages, &mut maps);
                }
            }
            Schema { messages, maps }
        })
    }

    impl Schema {
        /// The inner message of each event kind: `GetEventsResponse`'s
        /// oneof field numbered as the `EventType`.
        pub fn event_message(&self, kind: i32) -> Option<&str> {
            self.messages
                .get(".tetragon.GetEventsResponse")?
                .iter()
                .find(|f| f.number == kind)
                .and_then(|f| f.message.as_deref())
        }

        /// The inner message of every event kind.
        pub fn event_messages(&self) -> impl Iterator<Item = &str> {
            self.messages
                .get(".tetragon.GetEventsResponse")
                .into_iter()
                .flatten()
                .filter(|f| f.number != 0 && proto::tetragon::EventType::try_from(f.number).is_ok())
                .filter_map(|f| f.message.as_deref())
        }

        /// Whether `path` names a field below `message`.
        pub fn resolves(&self, message: &str, path: &[String]) -> bool {
            let Some((first, rest)) = path.split_first() else { return true };
            if self.maps.contains(message) {
                // Map keys are data, not schema.
                return true;
            }
            let Some(field) = self.messages.get(message).and_then(|fs| fs.iter().find(|f| &f.name == first)) else {
                return false;
            };
            match &field.message {
                _ if rest.is_empty() => true,
                Some(inner) => self.resolves(inner, rest),
                None => false,
            }
        }
    }
}

/// The first key of `value` (a protojson object of `message`, e.g.
/// `.tetragon.Filter`), or of a message below it, that names no field:
/// protojson decoding ignores such keys, and a filter with a misspelt
/// field would silently match everything. Keys are a field's name or its
/// lowerCamel JSON name.
pub fn unknown_key(message: &str, value: &Value) -> Option<String> {
    let schema = schema::get();
    let Value::Object(object) = value else { return None };
    if schema.maps.contains(message) {
        return None;
    }
    let fields = schema.messages.get(message)?;
    for (key, inner) in object {
        let Some(field) = fields.iter().find(|f| f.name == *key || lower_camel(&f.name) == *key) else {
            return Some(key.clone());
        };
        let Some(nested) = &field.message else { continue };
        let items: Vec<&Value> = match inner {
            Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        if let Some(bad) = items.into_iter().find_map(|v| unknown_key(nested, v)) {
            return Some(format!("{key}.{bad}"));
        }
    }
    None
}

/// `binary_regex` → `binaryRegex`, as protojson names fields.
fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `path` exists in at least one of the event kinds a filter
/// covers (every kind when its set is empty or inverted).
fn path_exists(path: &[String], event_set: &[i32], invert: bool) -> bool {
    let schema = schema::get();
    if event_set.is_empty() || invert {
        return schema.event_messages().any(|m| schema.resolves(m, path));
    }
    event_set.iter().filter_map(|k| schema.event_message(*k)).any(|m| schema.resolves(m, path))
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
                    let path: Vec<String> = p.split('.').map(str::to_owned).collect();
                    // A path naming nothing would filter nothing: refused,
                    // not silently passed.
                    if !path_exists(&path, &f.event_set, f.invert_event_set.is_some_and(|b| b.value)) {
                        return Err(FieldFilterError::UnknownPath(p.chars().take(QUOTED_PATH).collect()));
                    }
                    paths.push(path);
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
        if self.is_empty() {
            return proto::shared::OutEvent::Shared(event);
        }
        // Field filters go through JSON, which has no resume positions.
        let mut own = self.apply(event.event().clone());
        own.resume = event.resume().to_vec();
        own.into()
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
        let m = mask(&["process.binray"], FieldFilterAction::Include, &[]);
        assert_eq!(FieldFilters::new(&[m]).unwrap_err(), FieldFilterError::UnknownPath("process.binray".into()));
        let m = mask(&["process.binary.x"], FieldFilterAction::Exclude, &[]);
        assert!(FieldFilters::new(&[m]).is_err(), "a string has no fields");
        // `status` exists on exits only: fine for all kinds, not for execs.
        assert!(FieldFilters::new(&[mask(&["status"], FieldFilterAction::Exclude, &[])]).is_ok());
        let m = mask(&["status"], FieldFilterAction::Exclude, &[EventType::ProcessExec]);
        assert_eq!(FieldFilters::new(&[m]).unwrap_err(), FieldFilterError::UnknownPath("status".into()));
        // Map keys are data.
        assert!(FieldFilters::new(&[mask(&["process.pod.pod_labels.app"], FieldFilterAction::Exclude, &[])]).is_ok());
    }
}
