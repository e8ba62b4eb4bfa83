//! The Admin API's OpenAPI document, served at `/openapi.json` beside it: every path of
//! [`super::router`], its parameters, and the shapes APISIX answers with. Resource documents are
//! described as JSON objects (their fields are APISIX's; a plugin's configuration has its own
//! schema at `/apisix/admin/schema/plugins/{name}`).

use serde_json::{Value, json};

use crate::resource::Kind;

/// The document, as JSON (the caller reads it into its OpenAPI type).
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for kind in Kind::ALL {
        if kind == Kind::Credentials {
            continue;
        }
        let segment = kind.segment();
        let noun = kind.noun();
        let tag = [segment];
        let mut collection = json!({
            "get": operation(&tag, &format!("List {segment}"), list_parameters(), None, "List"),
            "put": operation(&tag, &format!("Create or replace a {noun}, its {} in the body", kind.id_field()), vec![ttl()], Some("Resource"), "Written"),
        });
        if !matches!(kind, Kind::Consumers | Kind::PluginMetadata) {
            collection["post"] = operation(
                &tag,
                &format!("Create a {noun} with a generated id"),
                vec![],
                Some("Resource"),
                "Written",
            );
        }
        paths.insert(format!("/apisix/admin/{segment}"), collection);
        let id = [path_parameter(
            "id",
            &format!("The {noun}'s {}", kind.id_field()),
        )];
        paths.insert(
            format!("/apisix/admin/{segment}/{{id}}"),
            json!({
                "parameters": id,
                "get": operation(&tag, &format!("Get a {noun}"), vec![], None, "Item"),
                "put": operation(&tag, &format!("Create or replace a {noun}"), vec![ttl()], Some("Resource"), "Written"),
                "patch": operation(&tag, &format!("Change a {noun} (JSON merge patch)"), vec![ttl()], Some("Resource"), "Written"),
                "delete": operation(&tag, &format!("Delete a {noun} nothing refers to"), vec![force()], None, "Deleted"),
            }),
        );
        paths.insert(
            format!("/apisix/admin/{segment}/{{id}}/{{path}}"),
            json!({
                "parameters": [id[0].clone(), path_parameter("path", "A field of the document, `/`-separated")],
                "patch": operation(&tag, &format!("Replace one field of a {noun}"), vec![ttl()], Some("Any"), "Written"),
            }),
        );
    }
    let credential = ["credentials"];
    let username = path_parameter("username", "The consumer's username");
    paths.insert(
        "/apisix/admin/consumers/{username}/credentials".into(),
        json!({
            "parameters": [username.clone()],
            "get": operation(&credential, "List a consumer's credentials", list_parameters(), None, "List"),
            "put": operation(&credential, "Create or replace a credential, its id in the body", vec![ttl()], Some("Resource"), "Written"),
            "post": operation(&credential, "Create a credential with a generated id", vec![ttl()], Some("Resource"), "Written"),
        }),
    );
    paths.insert(
        "/apisix/admin/consumers/{username}/credentials/{id}".into(),
        json!({
            "parameters": [username, path_parameter("id", "The credential's id")],
            "get": operation(&credential, "Get a credential", vec![], None, "Item"),
            "put": operation(&credential, "Create or replace a credential", vec![ttl()], Some("Resource"), "Written"),
            "patch": operation(&credential, "Change a credential (JSON merge patch)", vec![ttl()], Some("Resource"), "Written"),
            "delete": operation(&credential, "Delete a credential", vec![], None, "Deleted"),
        }),
    );
    let plugins = ["plugins"];
    paths.insert(
        "/apisix/admin/plugins/list".into(),
        json!({"get": operation(&plugins, "The plugins this gateway runs", vec![], None, "Names")}),
    );
    let side = json!({"name": "schema_type", "in": "query", "required": false,
        "description": "`route` (default) or `consumer`: which side of an authentication plugin",
        "schema": {"type": "string", "enum": ["route", "consumer"]}});
    for path in [
        "/apisix/admin/schema/plugins/{name}",
        "/apisix/admin/plugins/{name}",
    ] {
        paths.insert(
            path.into(),
            json!({
                "parameters": [path_parameter("name", "The plugin's name")],
                "get": operation(&plugins, "A plugin configuration's JSON Schema", vec![side.clone()], None, "Any"),
            }),
        );
    }
    let all = json!({"name": "all", "in": "query", "required": true,
        "description": "`true`", "schema": {"type": "string", "enum": ["true"]}});
    paths.insert(
        "/apisix/admin/plugins".into(),
        json!({"get": operation(&plugins, "Every plugin's schema, by name", vec![all], None, "Any")}),
    );
    paths.insert(
        "/apisix/admin/schema/validate/{kind}".into(),
        json!({
            "parameters": [path_parameter("kind", "A resource kind: routes, upstreams…")],
            "post": operation(&["schema"], "Check a document as a write would, storing nothing", vec![], Some("Resource"), "Any"),
        }),
    );
    let history = ["history"];
    let number = |name: &str, description: &str| {
        json!({"name": name, "in": "query", "required": false, "description": description,
            "schema": {"type": "integer", "format": "int64"}})
    };
    paths.insert(
        "/axle/admin/history".into(),
        json!({"get": operation(&history, "Every change, newest first",
            vec![number("before", "Changes before this revision"), number("limit", "At most this many (1-1000, default 100)")],
            None, "History")}),
    );
    let mut from = number("from", "The earlier revision");
    from["required"] = json!(true);
    paths.insert(
        "/axle/admin/diff".into(),
        json!({"get": operation(&history, "What differs between two revisions",
            vec![from, number("to", "The later revision (default: the current one)")], None, "Any")}),
    );
    paths.insert(
        "/axle/admin/rollback".into(),
        json!({"post": operation(&history, "Make the configuration what it was at a revision", vec![], Some("Rollback"), "Any")}),
    );

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Axle gateway Admin API",
            "description": "Apache APISIX's Admin API (v3): routes, services, upstreams, consumers \
                and their credentials, consumer groups, plugin configs, global rules, SSL \
                certificates and plugin metadata, with Axle's history, diff and rollback.",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "security": [{"api_key": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "api_key": {"type": "apiKey", "in": "header", "name": "X-API-KEY"},
            },
            "schemas": {
                "Resource": {"type": "object", "description": "An APISIX resource document", "additionalProperties": true},
                "Any": {"description": "Any JSON value"},
                "Item": {"type": "object", "required": ["key", "value"], "properties": {
                    "key": {"type": "string", "examples": ["/apisix/routes/1"]},
                    "value": {"$ref": "#/components/schemas/Resource"},
                    "createdIndex": {"type": "integer", "format": "int64"},
                    "modifiedIndex": {"type": "integer", "format": "int64"},
                }},
                "List": {"type": "object", "required": ["total", "list"], "properties": {
                    "total": {"type": "integer"},
                    "list": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                }},
                "Written": {"type": "object", "required": ["key", "value"], "properties": {
                    "key": {"type": "string"},
                    "value": {"$ref": "#/components/schemas/Resource"},
                }},
                "Deleted": {"type": "object", "required": ["deleted", "key"], "properties": {
                    "deleted": {"type": "string"},
                    "key": {"type": "string"},
                }},
                "Names": {"type": "array", "items": {"type": "string"}},
                "History": {"type": "object", "properties": {
                    "revision": {"type": "integer", "format": "int64"},
                    "changes": {"type": "array", "items": {"type": "object", "properties": {
                        "revision": {"type": "integer", "format": "int64"},
                        "key": {"type": "string"},
                        "value": {"description": "The document after the change; null when deleted"},
                        "changed_at": {"type": "string"},
                    }}},
                }},
                "Rollback": {"type": "object", "required": ["revision"], "additionalProperties": false,
                    "properties": {"revision": {"type": "integer", "format": "int64"}}},
                "Error": {"type": "object", "properties": {"error_msg": {"type": "string"}}},
            },
        },
    })
}

/// The document of a data-plane node, which serves no Admin API (only health and metrics).
pub fn health_only() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Axle gateway (data plane only)", "version": env!("CARGO_PKG_VERSION")},
        "paths": {},
    })
}

/// An operation: its request body (a schema's name), and its answer (a schema's name) beside
/// the errors every Admin API call can answer.
fn operation(
    tags: &[&str],
    summary: &str,
    parameters: Vec<Value>,
    body: Option<&str>,
    answer: &str,
) -> Value {
    let reference = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let error = |description: &str| {
        json!({"description": description,
            "content": {"application/json": {"schema": reference("Error")}}})
    };
    let mut operation = json!({
        "tags": tags,
        "summary": summary,
        "responses": {
            "200": {"description": "Done", "content": {"application/json": {"schema": reference(answer)}}},
            "400": error("Invalid: `error_msg` names the field"),
            "401": error("No or a wrong X-API-KEY"),
            "403": error("The caller's address is not in allow_admin"),
            "404": {"description": "No such resource"},
        },
    });
    if !parameters.is_empty() {
        operation["parameters"] = Value::Array(parameters);
    }
    if let Some(body) = body {
        operation["requestBody"] = json!({"required": true,
            "content": {"application/json": {"schema": reference(body)}}});
        operation["responses"]["201"] = json!({"description": "Created",
            "content": {"application/json": {"schema": reference(answer)}}});
        operation["responses"]["409"] = error("The configuration kept changing; try again");
    }
    operation
}

fn path_parameter(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description,
        "schema": {"type": "string"}})
}

/// `force=true`: delete even what others refer to.
fn force() -> Value {
    json!({"name": "force", "in": "query", "required": false,
        "description": "`true`: delete even what other resources refer to",
        "schema": {"type": "string"}})
}

/// `ttl=N`: the written resource lives N seconds.
fn ttl() -> Value {
    json!({"name": "ttl", "in": "query", "required": false,
        "description": "Seconds the resource lives, then it is deleted",
        "schema": {"type": "integer", "minimum": 1}})
}

/// Paging and filters of a list.
fn list_parameters() -> Vec<Value> {
    let query = |name: &str, kind: &str, description: &str| {
        json!({"name": name, "in": "query", "required": false, "description": description,
            "schema": {"type": kind}})
    };
    vec![
        query("page", "integer", "The page, from 1"),
        query(
            "page_size",
            "integer",
            "Items per page, 10-500 (all when unset)",
        ),
        query("name", "string", "Only those whose name contains this"),
        query(
            "label",
            "string",
            "Only those with this label (`key` or `key:value`)",
        ),
        query(
            "uri",
            "string",
            "Routes only: those whose uri contains this",
        ),
        query(
            "filter",
            "string",
            "Routes only: `service_id=…&upstream_id=…`, URL-encoded once more",
        ),
    ]
}
