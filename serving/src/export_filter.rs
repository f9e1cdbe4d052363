//! `--export-allowlist`, `--export-denylist` and `--field-filters`: which
//! events the export file gets, and which of their fields, in Tetragon's
//! format: JSON objects one after another (a `Filter` each for the lists,
//! a `FieldFilter` each for the field filters), as `GetEvents` takes them.
//! An event is written if any allow filter passes it (or there are none)
//! and no deny filter does.

use proto::tetragon::{FieldFilter, Filter};
use serde::de::DeserializeOwned;

/// The parsed flags; compiled for the bus by [`ExportFilters::compile`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportFilters {
    pub allow: Vec<Filter>,
    pub deny: Vec<Filter>,
    pub fields: Vec<FieldFilter>,
}

impl ExportFilters {
    /// From the flags' texts (empty: none). An error names the flag and
    /// the filter at fault.
    pub fn parse(allowlist: &str, denylist: &str, field_filters: &str) -> Result<Self, (&'static str, String)> {
        let filters = ExportFilters {
            allow: parse_list("export-allowlist", ".tetragon.Filter", allowlist)?,
            deny: parse_list("export-denylist", ".tetragon.Filter", denylist)?,
            fields: parse_list("field-filters", ".tetragon.FieldFilter", &field_filters_with_masks(field_filters)?)?,
        };
        // Checked now (regexes, event types, paths), so start-up fails on them.
        filters.compile()?;
        Ok(filters)
    }

    /// The bus subscription's filters.
    pub fn compile(&self) -> Result<events::RequestFilters, (&'static str, String)> {
        let filter = events::EventFilter::new(&self.allow, &self.deny)
            .map_err(|e| ("export-allowlist/export-denylist", e.to_string()))?;
        let fields = events::fields::FieldFilters::new(&self.fields).map_err(|e| ("field-filters", e.to_string()))?;
        Ok(events::RequestFilters { filter, fields, resume: None, client: None })
    }
}

/// `fields` as protojson writes a field mask, a string of comma-separated
/// paths (Tetragon's format), rewritten as the object the decoder takes,
/// with lowerCamel paths (`process.execId`) in proto's snake_case.
fn field_filters_with_masks(text: &str) -> Result<String, (&'static str, String)> {
    let mut out = String::new();
    for (i, value) in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>().enumerate() {
        let mut value = value.map_err(|e| ("field-filters", format!("filter {} is not JSON: {e}", i + 1)))?;
        if let Some(fields) = value.get_mut("fields")
            && let Some(paths) = fields.as_str()
        {
            let paths: Vec<String> =
                paths.split(',').map(|p| proto::json::snake_case(p.trim())).filter(|p| !p.is_empty()).collect();
            *fields = serde_json::json!({ "paths": paths });
        }
        out.push_str(&value.to_string());
        out.push('\n');
    }
    Ok(out)
}

/// JSON objects one after another (whitespace or nothing between them).
fn parse_list<T: DeserializeOwned>(
    flag: &'static str,
    message: &str,
    text: &str,
) -> Result<Vec<T>, (&'static str, String)> {
    let mut out = Vec::new();
    for (i, value) in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>().enumerate() {
        let n = i + 1;
        let value = value.map_err(|e| (flag, format!("filter {n} is not JSON: {e}")))?;
        if !value.is_object() {
            return Err((flag, format!("filter {n} is not a JSON object")));
        }
        if let Some(key) = events::fields::unknown_key(message, &value) {
            let key: String = key.chars().take(64).collect();
            return Err((flag, format!("filter {n}: unknown field {key:?}")));
        }
        out.push(serde_json::from_value(value).map_err(|e| (flag, format!("filter {n}: {e}")))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proto::tetragon::{EventType, FieldFilterAction};

    use super::*;

    #[test]
    fn tetragons_examples_parse() {
        let f = ExportFilters::parse(
            r#"{"event_set":["PROCESS_EXEC", "PROCESS_EXIT"]} {"binary_regex":["^/usr/bin/curl$"]}"#,
            "{\"namespace\":[\"kube-system\"]}\n{\"eventSet\":[\"PROCESS_KPROBE\"]}",
            r#"{"event_set":["PROCESS_EXEC"],"fields":"process.binary,process.arguments","action":"INCLUDE"}"#,
        )
        .unwrap();
        assert_eq!(f.allow.len(), 2);
        assert_eq!(f.allow[0].event_set, vec![EventType::ProcessExec as i32, EventType::ProcessExit as i32]);
        assert_eq!(f.allow[1].binary_regex, vec!["^/usr/bin/curl$".to_owned()]);
        assert_eq!(f.deny[1].event_set, vec![EventType::ProcessKprobe as i32], "lowerCamel names too");
        assert_eq!(f.fields[0].action, FieldFilterAction::Include as i32);
        assert_eq!(
            f.fields[0].fields.as_ref().unwrap().paths,
            vec!["process.binary".to_owned(), "process.arguments".to_owned()]
        );
        let camel = ExportFilters::parse("", "", r#"{"fields":"process.execId, parent.binary","action":"EXCLUDE"}"#);
        assert_eq!(
            camel.unwrap().fields[0].fields.as_ref().unwrap().paths,
            vec!["process.exec_id".to_owned(), "parent.binary".to_owned()]
        );
        assert_eq!(ExportFilters::parse("", " \n", ""), Ok(ExportFilters::default()));
    }

    #[test]
    fn bad_filters_are_refused_by_flag_and_position() {
        let err = |a: &str, d: &str, f: &str| ExportFilters::parse(a, d, f).unwrap_err();
        assert_eq!(
            err(r#"{"binary_regx":["x"]}"#, "", ""),
            ("export-allowlist", "filter 1: unknown field \"binary_regx\"".into())
        );
        assert_eq!(
            err("", r#"{} {"capabilities":{"permitted":{"anyy":[]}}}"#, ""),
            ("export-denylist", "filter 2: unknown field \"capabilities.permitted.anyy\"".into())
        );
        assert!(err("{\"event_set\":[\"PROCESS_NOPE\"]}", "", "").1.starts_with("filter 1: "));
        assert!(err("{\"pid\":[1]", "", "").1.starts_with("filter 1 is not JSON"));
        assert_eq!(err("[1]", "", "").1, "filter 1 is not a JSON object");
        assert_eq!(err(r#"{"binary_regex":["("]}"#, "", "").0, "export-allowlist/export-denylist");
        assert_eq!(err("", "", r#"{"fields":"process.nope","action":"INCLUDE"}"#).0, "field-filters");
    }
}
