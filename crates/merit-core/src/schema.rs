//! A small, strict subset of JSON Schema for the `gates.json_schema` policy key.
//!
//! Supported keywords: `type`, `required`, `properties`, `additionalProperties`
//! (boolean), `items`, `enum`, `const`, `minLength`, `maxLength`, `minimum`,
//! `maximum`, `minItems`, `maxItems`, plus the annotations `$schema`, `$id`,
//! `title`, `description`. Any other keyword is refused when the policy is
//! checked, so a schema never silently checks less than its author meant.

use serde_json::Value;

const KEYWORDS: &[&str] = &[
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "$schema",
    "$id",
    "title",
    "description",
];

const TYPES: &[&str] = &["object", "array", "string", "number", "integer", "boolean", "null"];

/// Checks that `schema` uses only supported keywords, with well-formed values.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    check_at(schema, "#")
}

fn check_at(schema: &Value, at: &str) -> Result<(), String> {
    let obj = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(o) => o,
        _ => return Err(format!("{at}: a schema must be an object or a boolean")),
    };
    for (k, v) in obj {
        if !KEYWORDS.contains(&k.as_str()) {
            return Err(format!("{at}: keyword `{k}` is not supported (supported: {})", KEYWORDS.join(", ")));
        }
        match k.as_str() {
            "type" => {
                let names: Vec<&Value> = match v {
                    Value::Array(a) => a.iter().collect(),
                    other => vec![other],
                };
                for n in names {
                    if !n.as_str().is_some_and(|s| TYPES.contains(&s)) {
                        return Err(format!("{at}/type: `{n}` is not a JSON Schema type"));
                    }
                }
            }
            "required" if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) => {
                return Err(format!("{at}/required: must be a list of strings"));
            }
            "properties" => {
                let Some(props) = v.as_object() else {
                    return Err(format!("{at}/properties: must be an object"));
                };
                for (name, sub) in props {
                    check_at(sub, &format!("{at}/properties/{name}"))?;
                }
            }
            "additionalProperties" if !v.is_boolean() => {
                return Err(format!("{at}/additionalProperties: only true or false is supported"));
            }
            "items" => check_at(v, &format!("{at}/items"))?,
            "enum" if !v.is_array() => {
                return Err(format!("{at}/enum: must be a list"));
            }
            "minLength" | "maxLength" | "minItems" | "maxItems" if v.as_u64().is_none() => {
                return Err(format!("{at}/{k}: must be a non-negative whole number"));
            }
            "minimum" | "maximum" if !v.is_number() => {
                return Err(format!("{at}/{k}: must be a number"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Validates `value` against a schema accepted by [`check_schema`]; the error
/// names the JSON pointer of the first offending value.
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    validate_at(schema, value, "")
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.as_i64().is_some() || value.as_u64().is_some() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    }
}

fn validate_at(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let here = if at.is_empty() { "/" } else { at };
    let obj = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{here}: no value is allowed here")),
        Value::Object(o) => o,
        _ => return Ok(()),
    };
    if let Some(t) = obj.get("type") {
        let names: Vec<&str> = match t {
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            other => other.as_str().into_iter().collect(),
        };
        if !names.iter().any(|n| type_matches(n, value)) {
            return Err(format!("{here}: expected {}", names.join(" or ")));
        }
    }
    if let Some(Value::Array(options)) = obj.get("enum") {
        if !options.contains(value) {
            return Err(format!("{here}: value is not one of the allowed values"));
        }
    }
    if let Some(c) = obj.get("const") {
        if c != value {
            return Err(format!("{here}: value must be {c}"));
        }
    }
    if let Value::String(s) = value {
        let len = s.chars().count() as u64;
        if let Some(min) = obj.get("minLength").and_then(Value::as_u64) {
            if len < min {
                return Err(format!("{here}: string is {len} characters, shorter than {min}"));
            }
        }
        if let Some(max) = obj.get("maxLength").and_then(Value::as_u64) {
            if len > max {
                return Err(format!("{here}: string is {len} characters, longer than {max}"));
            }
        }
    }
    if let Some(x) = value.as_f64() {
        if let Some(min) = obj.get("minimum").and_then(Value::as_f64) {
            if x < min {
                return Err(format!("{here}: {x} is less than {min}"));
            }
        }
        if let Some(max) = obj.get("maximum").and_then(Value::as_f64) {
            if x > max {
                return Err(format!("{here}: {x} is more than {max}"));
            }
        }
    }
    if let Value::Array(items) = value {
        let n = items.len() as u64;
        if let Some(min) = obj.get("minItems").and_then(Value::as_u64) {
            if n < min {
                return Err(format!("{here}: {n} items, fewer than {min}"));
            }
        }
        if let Some(max) = obj.get("maxItems").and_then(Value::as_u64) {
            if n > max {
                return Err(format!("{here}: {n} items, more than {max}"));
            }
        }
        if let Some(item_schema) = obj.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate_at(item_schema, item, &format!("{at}/{i}"))?;
            }
        }
    }
    if let Value::Object(map) = value {
        if let Some(Value::Array(req)) = obj.get("required") {
            for name in req.iter().filter_map(Value::as_str) {
                if !map.contains_key(name) {
                    return Err(format!("{here}: missing required field `{name}`"));
                }
            }
        }
        let props = obj.get("properties").and_then(Value::as_object);
        for (k, v) in map {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => validate_at(sub, v, &format!("{at}/{k}"))?,
                None => {
                    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
                        return Err(format!("{here}: field `{k}` is not allowed"));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unsupported_keywords_are_refused() {
        assert!(check_schema(&json!({"type": "object", "patternProperties": {}})).is_err());
        assert!(check_schema(&json!({"type": "thing"})).is_err());
        assert!(check_schema(&json!({"properties": {"a": {"type": "string", "minLength": 3}}})).is_ok());
    }

    #[test]
    fn validation_names_the_place() {
        let s = json!({"type": "object", "required": ["text"], "properties": {
            "text": {"type": "string", "minLength": 3},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}}
        }, "additionalProperties": false});
        assert!(validate(&s, &json!({"text": "hello", "tags": ["a"]})).is_ok());
        assert!(validate(&s, &json!({})).unwrap_err().contains("missing required field `text`"));
        assert!(validate(&s, &json!({"text": "hi"})).unwrap_err().starts_with("/text"));
        assert!(validate(&s, &json!({"text": "hello", "tags": ["c"]})).unwrap_err().starts_with("/tags/0"));
        assert!(validate(&s, &json!({"text": "hello", "x": 1})).unwrap_err().contains("`x`"));
    }
}
