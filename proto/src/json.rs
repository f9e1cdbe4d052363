//! protojson for `GetEventsResponse`, written by hand so that the `event`
//! oneof comes first, as Go's protojson (declaration order) writes it.
//! Every other message uses the pbjson-generated impls.

use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::tetragon::get_events_response::Event;
use crate::tetragon::{EventType, GetEventsResponse};

macro_rules! impl_json {
    ($($variant:ident, $name:literal, $ty:ident, $class:ident;)*) => {
        fn serialize_event<M: SerializeMap>(map: &mut M, event: &Event) -> Result<(), M::Error> {
            match event { $(Event::$variant(v) => map.serialize_entry($name, v),)* }
        }

        fn deserialize_event(key: &str, value: serde_json::Value) -> Option<Result<Event, serde_json::Error>> {
            match key {
                $($name => Some(serde_json::from_value(value).map(Event::$variant)),)*
                _ => None,
            }
        }
    };
}

crate::kinds::for_each_event_kind!(impl_json);

impl GetEventsResponse {
    /// The event's type, `UNDEF` when the oneof is empty.
    pub fn event_type(&self) -> EventType {
        self.event.as_ref().map_or(EventType::Undef, Event::event_type)
    }
}

impl Serialize for GetEventsResponse {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(event) = &self.event {
            serialize_event(&mut map, event)?;
        }
        if !self.node_name.is_empty() {
            map.serialize_entry("node_name", &self.node_name)?;
        }
        if let Some(time) = &self.time {
            map.serialize_entry("time", time)?;
        }
        if let Some(info) = &self.aggregation_info {
            map.serialize_entry("aggregation_info", info)?;
        }
        if !self.cluster_name.is_empty() {
            map.serialize_entry("cluster_name", &self.cluster_name)?;
        }
        if !self.node_labels.is_empty() {
            map.serialize_entry("node_labels", &self.node_labels)?;
        }
        // `resume` (Vigil's relay positions) is transport state for gRPC
        // clients that reconnect, not part of the event: JSON stays exactly
        // Tetragon's shape.
        map.end()
    }
}

impl<'de> Deserialize<'de> for GetEventsResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let mut out = GetEventsResponse::default();
        for (key, value) in object {
            if value.is_null() {
                continue;
            }
            let field = |e: serde_json::Error| D::Error::custom(format!("field `{key}`: {e}"));
            match key.as_str() {
                "node_name" | "nodeName" => out.node_name = serde_json::from_value(value).map_err(field)?,
                "time" => out.time = Some(serde_json::from_value(value).map_err(field)?),
                "aggregation_info" | "aggregationInfo" => {
                    out.aggregation_info = Some(serde_json::from_value(value).map_err(field)?)
                }
                "cluster_name" | "clusterName" => out.cluster_name = serde_json::from_value(value).map_err(field)?,
                "node_labels" | "nodeLabels" => out.node_labels = serde_json::from_value(value).map_err(field)?,
                // Unknown keys are ignored, like protojson's DiscardUnknown,
                // so newer Tetragon exports still decode.
                other => {
                    if let Some(event) = deserialize_event(&snake_case(other), value) {
                        if out.event.is_some() {
                            return Err(D::Error::custom(format!("more than one event kind (`{other}`)")));
                        }
                        out.event = Some(event.map_err(field)?);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// protojson readers accept the lowerCamelCase JSON name too: `execId` →
/// `exec_id` (a dotted path converts part by part).
pub fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Renders one event as a protojson line (no trailing newline).
pub fn to_json_line(event: &GetEventsResponse) -> String {
    // Serializing plain data into a String cannot fail; fall back to an
    // empty object rather than panicking if it ever did.
    serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned())
}

/// Parses one protojson line into an event.
pub fn from_json_line(line: &str) -> Result<GetEventsResponse, serde_json::Error> {
    serde_json::from_str(line)
}

/// `KprobeArgument` as Go's protojson writes it: the oneof member, then
/// `label` (declaration order), and `label` only when set.
impl Serialize for crate::tetragon::KprobeArgument {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Ordered<'a> {
            #[serde(flatten)]
            value: &'a crate::vigil::json::KprobeArgumentValue,
            #[serde(skip_serializing_if = "str::is_empty")]
            label: &'a str,
        }
        use prost::Message;
        // Same field numbers: the oneof re-decodes as the shadow message.
        let value = crate::vigil::json::KprobeArgumentValue::decode(self.encode_to_vec().as_slice())
            .map_err(serde::ser::Error::custom)?;
        Ordered { value: &value, label: &self.label }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for crate::tetragon::KprobeArgument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use prost::Message;
        let mut map = serde_json::Map::deserialize(deserializer)?;
        let label = match map.remove("label") {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom("KprobeArgument.label must be a string")),
        };
        let value: crate::vigil::json::KprobeArgumentValue =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
        let mut arg =
            crate::tetragon::KprobeArgument::decode(value.encode_to_vec().as_slice()).map_err(D::Error::custom)?;
        arg.label = label;
        Ok(arg)
    }
}
