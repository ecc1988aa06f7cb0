//! openapi.yaml is the contract: its (method, path) set equals the router's, and every response
//! the API tests receive is validated against the schema the spec gives for that route and status.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use rbm_recommender::http::ROUTES;
use serde_json::Value;

pub struct Spec {
    document: Value,
}

pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
        let document: Value = serde_norway::from_str(&text).expect("openapi.yaml parses");
        assert_eq!(
            document["openapi"].as_str().map(|v| v.starts_with("3.1")),
            Some(true)
        );
        Spec { document }
    })
}

impl Spec {
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut operations = BTreeSet::new();
        for (path, item) in self.document["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if matches!(method.as_str(), "get" | "post" | "put" | "delete" | "patch") {
                    operations.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        operations
    }

    /// The spec path template matching a concrete request path, e.g. /users/{id}/ratings.
    fn template(&self, path: &str) -> Option<String> {
        let path = path.split('?').next().unwrap();
        let parts: Vec<&str> = path.split('/').collect();
        self.document["paths"]
            .as_object()
            .unwrap()
            .keys()
            .find(|template| {
                let t: Vec<&str> = template.split('/').collect();
                t.len() == parts.len()
                    && t.iter()
                        .zip(&parts)
                        .all(|(t, p)| t.starts_with('{') || t == p)
            })
            .cloned()
    }

    /// Checks a response body against the spec's schema for (method, path, status). Statuses the
    /// spec does not list for a known route fail; unknown routes must answer the error shape.
    pub fn check_response(&self, method: &str, path: &str, status: u16, body: &Value) {
        let Some(template) = self.template(path) else {
            self.validate(&self.document["components"]["schemas"]["Error"], body, "$");
            return;
        };
        let operation = &self.document["paths"][&template][method.to_lowercase()];
        if operation.is_null() {
            assert_eq!(status, 405, "{method} {template} is not in the spec");
            self.validate(&self.document["components"]["schemas"]["Error"], body, "$");
            return;
        }
        let response = &operation["responses"][status.to_string()];
        assert!(
            !response.is_null(),
            "openapi.yaml lists no {status} response for {method} {template}: {body}"
        );
        let response = self.resolve(response);
        let schema = &response["content"]["application/json"]["schema"];
        if !schema.is_null() {
            self.validate(schema, body, "$");
        }
    }

    fn resolve<'a>(&'a self, node: &'a Value) -> &'a Value {
        match node["$ref"].as_str() {
            Some(reference) => {
                let mut target = &self.document;
                for part in reference.trim_start_matches("#/").split('/') {
                    target = &target[part];
                }
                self.resolve(target)
            }
            None => node,
        }
    }

    /// Validates the JSON Schema subset the spec uses: $ref, type (or a list of types), enum,
    /// properties, required, additionalProperties: false, items, oneOf.
    fn validate(&self, schema: &Value, value: &Value, at: &str) {
        let schema = self.resolve(schema);
        if let Some(options) = schema["oneOf"].as_array() {
            let matching = options
                .iter()
                .filter(|s| std::panic::catch_unwind(|| self.validate(s, value, at)).is_ok())
                .count();
            assert_eq!(
                matching, 1,
                "{at}: {value} matches {matching} of the oneOf schemas"
            );
            return;
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let actual = match value {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            let ok = types
                .iter()
                .any(|t| *t == actual || (*t == "number" && actual == "integer"));
            assert!(ok, "{at}: expected {types:?}, got {value}");
        }
        if let Some(options) = schema["enum"].as_array() {
            assert!(
                options.contains(value),
                "{at}: {value} is not one of {options:?}"
            );
        }
        if let Value::Object(object) = value {
            for required in schema["required"].as_array().into_iter().flatten() {
                let key = required.as_str().unwrap();
                assert!(
                    object.contains_key(key),
                    "{at}: missing required {key} in {value}"
                );
            }
            let properties = schema["properties"].as_object();
            for (key, field) in object {
                match properties.and_then(|p| p.get(key)) {
                    Some(property) => self.validate(property, field, &format!("{at}.{key}")),
                    None => assert!(
                        schema["additionalProperties"] != Value::Bool(false),
                        "{at}: unexpected property {key}"
                    ),
                }
            }
        }
        if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
            for (n, item) in items.iter().enumerate() {
                self.validate(item_schema, item, &format!("{at}[{n}]"));
            }
        }
    }
}

#[test]
fn router_routes_equal_the_spec_operations() {
    let router: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(router, spec().operations());
}

#[tokio::test]
async fn every_listed_route_is_served() {
    let app = crate::spawn_app(crate::Backend::Sqlite).await;
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{id}", "1")
            .replace("{item_id}", "x")
            .replace("{version}", "1");
        let response = app
            .client
            .request(method.parse().unwrap(), app.url(&concrete))
            .bearer_auth(crate::ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status != 405 && !(status == 404 && body["error"]["message"] == "no such route"),
            "{method} {path}: {status}"
        );
    }
}
