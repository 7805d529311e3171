//! Editing the OpenAPI document as JSON, for what `utoipa`'s declarations cannot say: a schema
//! fragment merged into a schema or a parameter, and links between operations. Used by
//! `api::docs` and the seed dialects' `api::compat::openapi`.

use serde_json::{json, Map, Value};

/// A link from a created resource to an operation on it: the operation's id, its parameters
/// as runtime expressions on the response, and what its body takes from the response.
pub(crate) struct Link {
    pub to: &'static str,
    pub parameters: &'static [(&'static str, &'static str)],
    pub body: Option<(&'static str, &'static str)>,
}

pub(crate) const fn link(
    to: &'static str,
    parameters: &'static [(&'static str, &'static str)],
) -> Link {
    Link {
        to,
        parameters,
        body: None,
    }
}

/// The schema of one of an operation's parameters.
pub(crate) fn parameter<'a>(
    doc: &'a mut Value,
    path: &str,
    method: &str,
    name: &str,
) -> Option<&'a mut Value> {
    doc.get_mut("paths")?
        .get_mut(path)?
        .get_mut(method)?
        .get_mut("parameters")?
        .as_array_mut()?
        .iter_mut()
        .find(|p| p["name"] == name)?
        .get_mut("schema")
}

/// Adds `extra`'s keys to a schema (the unit tests check that each one is found). A schema `utoipa` wrote as `oneOf: [null, X]` (an optional
/// field) gets them on its `X` alternative, where a string or number is checked.
pub(crate) fn merge(schema: Option<&mut Value>, extra: &Value) {
    let Some(schema) = schema else {
        return;
    };
    let target = match schema.get_mut("oneOf").and_then(Value::as_array_mut) {
        Some(alternatives) => alternatives
            .iter_mut()
            .find(|a| a["type"] != "null")
            .filter(|a| a.get("$ref").is_none()),
        None => Some(schema),
    };
    let (Some(target), Some(extra)) = (target.and_then(Value::as_object_mut), extra.as_object())
    else {
        return;
    };
    for (key, value) in extra {
        target.insert(key.clone(), value.clone());
    }
}

/// Adds the links of `tables` (each as `api::docs`'s `LINKS`) to the responses they start
/// from.
pub(crate) fn add_links(doc: &mut Value, tables: &[&[(&str, &str, &[Link])]]) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|operations| operations.values_mut())
    {
        let id = operation["operationId"].as_str().unwrap_or_default();
        let mut all = tables.iter().flat_map(|table| table.iter());
        let Some((_, status, targets)) = all.find(|(from, _, _)| *from == id) else {
            continue;
        };
        let Some(response) = operation.pointer_mut(&format!("/responses/{status}")) else {
            continue;
        };
        let links: Map<String, Value> = targets
            .iter()
            .map(|link| {
                let parameters: Map<String, Value> = link
                    .parameters
                    .iter()
                    .map(|(name, expression)| ((*name).to_owned(), json!(expression)))
                    .collect();
                let mut value = json!({"operationId": link.to, "parameters": parameters});
                if let Some((field, expression)) = link.body {
                    value["requestBody"] = json!({ field: expression });
                }
                (link.to.to_owned(), value)
            })
            .collect();
        response["links"] = Value::Object(links);
    }
}
