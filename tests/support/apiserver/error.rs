//! Errors as the API server reports them: an HTTP code plus a `meta.k8s.io/v1` `Status` body
//! whose `reason` is what kube-rs and kubectl key on (`NotFound`, `AlreadyExists`, `Conflict`, …).

use serde_json::{Value, json};

use super::resources::ResourceType;

/// One field error inside an `Invalid` status.
#[derive(Clone, Debug)]
pub struct Cause {
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// (name, group, plural) for `details`.
    pub details: Option<Box<(String, String, String)>>,
    pub causes: Vec<Cause>,
}

/// The `reason` a bare HTTP code maps to, as the real server words it.
pub fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason_for(code),
            message: message.into(),
            details: None,
            causes: Vec::new(),
        }
    }

    fn about(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details = Some(Box::new((
            name.to_string(),
            rt.group.clone(),
            rt.plural.clone(),
        )));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(404, format!("{} {name:?} not found", rt.qualified())).about(rt, name)
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        let mut e =
            Self::new(409, format!("{} {name:?} already exists", rt.qualified())).about(rt, name);
        e.reason = "AlreadyExists";
        e
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; \
                 please apply your changes to the latest version and try again",
                rt.qualified()
            ),
        )
        .about(rt, name)
    }

    pub fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let mut e = Self::new(
            422,
            format!(
                "{} {name:?} is invalid: {}",
                rt.qualified_kind(),
                list.join(", ")
            ),
        )
        .about(rt, name);
        e.causes = causes;
        e
    }

    /// A fault injected by a test, worded like the real error of that code.
    pub fn injected(code: u16, rt: &ResourceType, name: &str) -> Self {
        match code {
            409 => Self::conflict(rt, name),
            429 => Self::new(429, "Too many requests, please try again later."),
            500 => Self::new(500, "Internal error occurred: injected fault"),
            503 => Self::new(503, "the server is currently unable to handle the request"),
            504 => Self::new(
                504,
                "the server was unable to return a response in the time allotted",
            ),
            other => Self::new(other, format!("injected fault {other}")),
        }
    }

    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, group, kind)) = self.details.as_deref() {
            let mut d = json!({"name": name, "kind": kind});
            if !group.is_empty() {
                d["group"] = json!(group);
            }
            if !self.causes.is_empty() {
                d["causes"] = self
                    .causes
                    .iter()
                    .map(|c| json!({"reason": "FieldValueInvalid", "message": c.message, "field": c.field}))
                    .collect();
            }
            s["details"] = d;
        }
        if self.code == 429 {
            s["details"] = json!({"retryAfterSeconds": 1});
        }
        s
    }
}
