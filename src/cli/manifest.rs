//! Reading manifests from files for the CLI: multi-document YAML (or JSON) into typed objects,
//! with errors that name the file, the document, the field path and the broken rule.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{Canary, validate_canary};

/// A manifest that could not be used; printed as is and exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: not valid YAML: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: document {doc}: {path}: {message}")]
    Field {
        file: String,
        doc: usize,
        path: String,
        message: String,
    },
    #[error("{file}: {message}")]
    Missing { file: String, message: String },
    #[error("{file}: {}: invalid Canary:\n{}", name, errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        file: String,
        name: String,
        errors: Vec<crate::api::FieldError>,
    },
}

/// Reads every YAML document of a file as JSON values (empty documents are skipped).
pub fn read_documents(path: &Path) -> Result<Vec<Value>, ManifestError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        file: file.clone(),
        source,
    })?;
    parse_documents(&file, &text)
}

/// Parses YAML text (one or more documents) into JSON values.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Value>, ManifestError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Deserializes one document into `T`, naming the field path on error.
pub fn from_document<T: DeserializeOwned>(
    file: &str,
    doc: usize,
    value: Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ManifestError::Field {
            file: file.to_string(),
            doc,
            path: if path == "." { "(root)".into() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

/// Reads the Canaries of a manifest file (other kinds are ignored), validates each, and fails
/// when the file holds none.
pub fn load_canaries(path: &Path) -> Result<Vec<Canary>, ManifestError> {
    let file = path.display().to_string();
    let mut out = Vec::new();
    for (i, doc) in read_documents(path)?.into_iter().enumerate() {
        if doc.get("kind").and_then(Value::as_str) != Some("Canary") {
            continue;
        }
        let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if api != "serin.dev/v1beta1" {
            return Err(ManifestError::Field {
                file,
                doc: i + 1,
                path: "apiVersion".into(),
                message: format!(
                    "'{api}' is not served; use serin.dev/v1beta1 (a flagger.app/v1beta1 Canary needs only this line changed)"
                ),
            });
        }
        let canary: Canary = from_document(&file, i + 1, doc)?;
        let errors = validate_canary(&canary.spec);
        if !errors.is_empty() {
            return Err(ManifestError::Invalid {
                file,
                name: canary.metadata.name.clone().unwrap_or_default(),
                errors,
            });
        }
        out.push(canary);
    }
    if out.is_empty() {
        return Err(ManifestError::Missing {
            file,
            message: "holds no Canary (kind: Canary, apiVersion: serin.dev/v1beta1)".into(),
        });
    }
    Ok(out)
}
