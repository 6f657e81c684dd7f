//! Query templates: fills Flagger's variables (`{{ namespace }}`, `{{ name }}`, `{{ target }}`,
//! `{{ service }}`, `{{ interval }}`, `{{ variables.NAME }}`) into a query before it runs.

use std::collections::BTreeMap;

use super::MetricsError;

/// The values a query template can use.
#[derive(Clone, Copy, Debug)]
pub struct Vars<'a> {
    /// The Canary's name.
    pub name: &'a str,
    pub namespace: &'a str,
    /// `targetRef.name`: the canary Deployment.
    pub target: &'a str,
    /// The apex Service name.
    pub service: &'a str,
    /// The metric's interval as written (`1m` when unset).
    pub interval: &'a str,
    /// The metric's `templateVariables`.
    pub variables: Option<&'a BTreeMap<String, String>>,
}

const KNOWN: &str = "name, namespace, target, service, interval, variables.NAME";

/// Replaces every `{{ variable }}` in `text`. An unknown variable, an unset `variables.NAME` or
/// an unclosed `{{` is an error that names it.
pub fn render(text: &str, vars: &Vars<'_>) -> Result<String, MetricsError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(MetricsError::Template(format!(
                "'{{{{' at character {} is not closed with '}}}}'",
                offset + open
            )));
        };
        let name = after[..close].trim();
        out.push_str(lookup(name, vars)?);
        let consumed = open + 2 + close + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup<'a>(name: &str, vars: &Vars<'a>) -> Result<&'a str, MetricsError> {
    match name {
        "name" => Ok(vars.name),
        "namespace" => Ok(vars.namespace),
        "target" => Ok(vars.target),
        "service" => Ok(vars.service),
        "interval" => Ok(vars.interval),
        _ => {
            if let Some(key) = name.strip_prefix("variables.") {
                let set = vars.variables;
                return set.and_then(|m| m.get(key)).map(String::as_str).ok_or_else(|| {
                    let known = set
                        .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "none".into());
                    MetricsError::Template(format!(
                        "template variable 'variables.{key}' is not set; add '{key}' to the metric's templateVariables (set: {known})"
                    ))
                });
            }
            Err(MetricsError::Template(format!(
                "unknown template variable '{name}'; known variables: {KNOWN}"
            )))
        }
    }
}

/// Collapses runs of whitespace into single spaces (PromQL is sent on one line).
pub fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(variables: Option<&BTreeMap<String, String>>) -> Vars<'_> {
        Vars {
            name: "podinfo",
            namespace: "test",
            target: "podinfo",
            service: "podinfo-svc",
            interval: "1m",
            variables,
        }
    }

    #[test]
    fn fills_every_variable() {
        let mut v = BTreeMap::new();
        v.insert("cluster".to_string(), "local".to_string());
        let out = render(
            "{{ name }}/{{namespace}}/{{ target }}/{{ service }}[{{ interval }}] {{ variables.cluster }}",
            &vars(Some(&v)),
        )
        .unwrap();
        assert_eq!(out, "podinfo/test/podinfo/podinfo-svc[1m] local");
    }

    #[test]
    fn unknown_variable_is_named() {
        let err = render("x{{ ingress }}", &vars(None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'ingress'"), "{err}");
        assert!(err.contains("known variables"), "{err}");
    }

    #[test]
    fn unset_template_variable_is_named_with_the_ones_set() {
        let mut v = BTreeMap::new();
        v.insert("a".to_string(), "1".to_string());
        let err = render("{{ variables.b }}", &vars(Some(&v)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("variables.b"), "{err}");
        assert!(err.contains("set: a"), "{err}");
    }

    #[test]
    fn unclosed_braces_are_an_error() {
        let err = render("sum({{ namespace )", &vars(None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not closed"), "{err}");
    }

    #[test]
    fn text_without_variables_is_unchanged() {
        assert_eq!(render("vector(1)", &vars(None)).unwrap(), "vector(1)");
    }
}
