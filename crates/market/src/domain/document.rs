//! The OpenAPI document a version is published with: OpenAPI 3.0 or 3.1, in JSON or YAML,
//! checked when it is uploaded. A refused document is told the line and the problem.
//!
//! The checks are the ones that keep the catalog and the rendered reference sound: the
//! OpenAPI version, `info`'s title and version, paths that start with `/`, operations with
//! responses (OpenAPI 3.0 requires them), unique operation ids, and a declared path parameter
//! for every `{name}` in a path.

use std::collections::HashSet;

use serde_json::Value;

/// An accepted document, and what the catalog shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `3.0.3`, `3.1.0`…
    pub openapi: String,
    pub title: String,
    /// The API's own version, as `info.version` gives it.
    pub version: String,
    pub operations: Vec<Operation>,
    /// The whole document, as JSON.
    pub content: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// `GET`, `POST`…
    pub method: String,
    pub path: String,
    pub operation_id: Option<String>,
    pub summary: Option<String>,
}

/// Why a document is refused: where (1-based line and column, when known) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", at.map(|(line, _)| format!("line {line}: ")).unwrap_or_default())]
pub struct Problem {
    pub at: Option<(usize, usize)>,
    pub message: String,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Checks `text`, an OpenAPI 3.0 or 3.1 document in JSON or YAML.
pub fn check(text: &str) -> Result<Document, Problem> {
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| Problem {
        at: e.location().map(|l| (l.line(), l.column())),
        message: format!("not JSON or YAML: {e}"),
    })?;
    // Through serde_json: numeric keys (`200:` under `responses`) become text, as in JSON.
    let content = serde_json::to_value(&yaml).map_err(|e| Problem {
        at: None,
        message: format!("not a JSON document: {e}"),
    })?;
    let refuse = |path: &[&str], message: String| Problem {
        at: line_of(text, path).map(|line| (line, 1)),
        message: if path.is_empty() {
            message
        } else {
            format!("{}: {message}", path.join("."))
        },
    };
    if !content.is_object() {
        return Err(refuse(&[], "an OpenAPI document is an object".into()));
    }
    if content.get("swagger").is_some() {
        return Err(refuse(
            &["swagger"],
            "Swagger 2.0 is not supported: convert the document to OpenAPI 3 first".into(),
        ));
    }
    let openapi = match content.get("openapi") {
        Some(Value::String(v)) if v.starts_with("3.0.") || v.starts_with("3.1.") => v.clone(),
        Some(_) => return Err(refuse(&["openapi"], "must be 3.0.x or 3.1.x".into())),
        None => return Err(refuse(&[], "openapi: required (3.0.x or 3.1.x)".into())),
    };
    let info_text = |field: &str| match content.pointer(&format!("/info/{field}")) {
        Some(Value::String(v)) if !v.trim().is_empty() => Ok(v.clone()),
        Some(_) => Err(refuse(&["info", field], "must be a non-empty text".into())),
        None => Err(refuse(&["info"], format!("{field}: required"))),
    };
    let title = info_text("title")?;
    let version = info_text("version")?;
    let v30 = openapi.starts_with("3.0.");
    let paths = match content.get("paths") {
        Some(Value::Object(paths)) => paths.clone(),
        Some(_) => return Err(refuse(&["paths"], "must be an object".into())),
        None if v30 => return Err(refuse(&[], "paths: required".into())),
        None => Default::default(),
    };
    // In the document's order (the JSON map sorts its keys).
    let order: Vec<String> = match yaml.get("paths").and_then(serde_yaml_ng::Value::as_mapping) {
        Some(mapping) => mapping.keys().map(key_text).collect(),
        None => Vec::new(),
    };
    let mut operations = Vec::new();
    let mut ids = HashSet::new();
    for path in &order {
        let Some(item) = paths.get(path) else {
            continue;
        };
        if !path.starts_with('/') {
            return Err(refuse(&["paths", path], "a path starts with /".into()));
        }
        let Some(item) = item.as_object() else {
            return Err(refuse(&["paths", path], "must be an object".into()));
        };
        let shared = item.get("parameters");
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let at = ["paths", path.as_str(), method];
            let Some(operation) = operation.as_object() else {
                return Err(refuse(&at, "must be an object".into()));
            };
            match operation.get("responses") {
                Some(Value::Object(r)) if !r.is_empty() => {}
                Some(_) => return Err(refuse(&at, "responses: at least one".into())),
                None if v30 => return Err(refuse(&at, "responses: required".into())),
                None => {}
            }
            let operation_id = operation
                .get("operationId")
                .and_then(Value::as_str)
                .map(str::to_string);
            if let Some(id) = &operation_id
                && !ids.insert(id.clone())
            {
                return Err(refuse(
                    &[&at[..], &["operationId"]].concat(),
                    format!("{id} is the id of another operation too"),
                ));
            }
            let declared = [shared, operation.get("parameters")];
            for name in template_names(path) {
                if !declares(&declared, name) {
                    return Err(refuse(
                        &at,
                        format!("the path parameter {{{name}}} is not declared (in: path)"),
                    ));
                }
            }
            operations.push(Operation {
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                operation_id,
                summary: operation
                    .get("summary")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
    }
    Ok(Document {
        openapi,
        title,
        version,
        operations,
        content,
    })
}

/// A YAML key as the JSON map has it.
fn key_text(key: &serde_yaml_ng::Value) -> String {
    match serde_json::to_value(key) {
        Ok(Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// The `{name}`s of a path template.
fn template_names(path: &str) -> impl Iterator<Item = &str> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
}

/// Whether `lists` (path-level and operation parameters) declare the path parameter `name`;
/// a list with a `$ref` may declare it elsewhere, so it is taken as declaring it.
fn declares(lists: &[Option<&Value>], name: &str) -> bool {
    lists
        .iter()
        .flatten()
        .filter_map(|l| l.as_array())
        .flatten()
        .any(|p| {
            p.get("$ref").is_some()
                || (p.get("in").and_then(Value::as_str) == Some("path")
                    && p.get("name").and_then(Value::as_str) == Some(name))
        })
}

/// The 1-based line of the key at `path` (each key after the one before it), in JSON or YAML
/// text; the first line for the document itself (an empty path).
fn line_of(text: &str, path: &[&str]) -> Option<usize> {
    let mut from = 0;
    for key in path {
        from = find_key(text, key, from)?;
    }
    Some(text[..from].matches('\n').count() + 1)
}

/// Where the key `key` is written next at or after byte `from`: `"key":`, `'key':` or a bare
/// `key:` starting its line (after indentation or a list's `- `).
fn find_key(text: &str, key: &str, from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(found) = text.get(at..)?.find(key) {
        let start = at + found;
        let end = start + key.len();
        let before = &text[..start];
        let after = &text[end..];
        let quoted = ['"', '\''].into_iter().any(|q| {
            before.ends_with(q) && after.starts_with(q) && after[1..].trim_start().starts_with(':')
        });
        let line_start = before.rsplit('\n').next().unwrap_or_default();
        let bare = line_start.trim_start_matches([' ', '-']).is_empty()
            && after.trim_start_matches([' ', '\t']).starts_with(':');
        if quoted || bare {
            return Some(end);
        }
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PETS: &str = r#"openapi: 3.0.3
info:
  title: Pets
  version: 1.0.0
paths:
  /pets/{petId}:
    get:
      operationId: showPet
      parameters:
        - name: petId
          in: path
          required: true
          schema:
            type: string
      responses:
        200:
          description: the pet
  /pets:
    post:
      summary: Adds a pet
      responses:
        '201':
          description: added
"#;

    #[test]
    fn a_yaml_document_is_read() {
        let doc = check(PETS).unwrap();
        assert_eq!(doc.title, "Pets");
        assert_eq!(doc.version, "1.0.0");
        let ops: Vec<_> = doc
            .operations
            .iter()
            .map(|o| format!("{} {}", o.method, o.path))
            .collect();
        assert_eq!(ops, ["GET /pets/{petId}", "POST /pets"]);
        assert_eq!(doc.operations[1].summary.as_deref(), Some("Adds a pet"));
        // Numeric response codes are text, as in JSON.
        assert!(
            doc.content
                .pointer("/paths/~1pets~1{petId}/get/responses/200")
                .is_some()
        );
    }

    #[test]
    fn a_json_document_is_read() {
        let json = r#"{"openapi": "3.1.0", "info": {"title": "T", "version": "2"}, "paths": {}}"#;
        assert_eq!(check(json).unwrap().openapi, "3.1.0");
    }

    #[test]
    fn problems_name_the_line() {
        let missing = PETS.replace("          in: path\n", "          in: query\n");
        let e = check(&missing).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 7: paths./pets/{petId}.get: the path parameter {petId} is not declared (in: path)"
        );
        let no_responses = PETS.replace(
            "      responses:\n        '201':\n          description: added\n",
            "",
        );
        let e = check(&no_responses).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 19: paths./pets.post: responses: required"
        );
        let e = check(&PETS.replace("openapi: 3.0.3", "openapi: 2.0")).unwrap_err();
        assert_eq!(e.to_string(), "line 1: openapi: must be 3.0.x or 3.1.x");
        let e = check(&PETS.replace("  title: Pets\n", "")).unwrap_err();
        assert_eq!(e.to_string(), "line 2: info: title: required");
        let e = check(&PETS.replace("  /pets:", "  pets:")).unwrap_err();
        assert_eq!(e.to_string(), "line 18: paths.pets: a path starts with /");
    }

    #[test]
    fn a_document_that_does_not_parse_names_its_line() {
        let e = check("openapi: 3.0.3\ninfo:\n  title: [unclosed\n").unwrap_err();
        assert_eq!(e.at.map(|(line, _)| line), Some(4), "{e}");
        assert!(e.message.starts_with("not JSON or YAML"), "{e}");
    }

    #[test]
    fn swagger_2_is_refused_with_a_hint() {
        let e = check(r#"{"swagger": "2.0", "info": {"title": "T", "version": "1"}}"#).unwrap_err();
        assert!(
            e.message.contains("convert the document to OpenAPI 3"),
            "{e}"
        );
    }

    #[test]
    fn operation_ids_are_unique() {
        let twice = PETS.replace(
            "      summary: Adds a pet\n",
            "      operationId: showPet\n",
        );
        let e = check(&twice).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 20: paths./pets.post.operationId: showPet is the id of another operation too"
        );
    }
}
