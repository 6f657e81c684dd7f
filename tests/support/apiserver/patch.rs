//! Patch formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902, with `test`), and strategic
//! merge patch (merge patch plus the list rules of the built-in kinds: lists of objects merged by
//! their merge key, `finalizers` merged as a set, and the `$patch`, `$retainKeys`,
//! `$setElementOrder/` and `$deleteFromPrimitiveList/` directives).

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` removes, everything else replaces.
pub fn merge(target: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match target {
                Value::Object(t) => t.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {pointer:?}: it must start with '/'"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn index(token: &str, len: usize, allow_end: bool, pointer: &str) -> Result<usize, String> {
    if allow_end && token == "-" {
        return Ok(len);
    }
    let i: usize = token
        .parse()
        .map_err(|_| format!("invalid array index {token:?} in {pointer:?}"))?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if i > max || (!allow_end && len == 0) {
        return Err(format!("array index {i} out of bounds in {pointer:?}"));
    }
    Ok(i)
}

fn parent<'a>(doc: &'a mut Value, toks: &[String], pointer: &str) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| format!("path {pointer:?} does not exist"))?,
            Value::Array(a) => {
                let i = index(t, a.len(), false, pointer)?;
                &mut a[i]
            }
            _ => return Err(format!("path {pointer:?} does not exist")),
        };
    }
    Ok(cur)
}

fn get_at(doc: &Value, pointer: &str) -> Result<Value, String> {
    doc.pointer(pointer)
        .cloned()
        .ok_or_else(|| format!("path {pointer:?} does not exist"))
}

fn remove_at(doc: &mut Value, pointer: &str) -> Result<Value, String> {
    let toks = tokens(pointer)?;
    let (last, init) = toks
        .split_last()
        .ok_or_else(|| "cannot remove the whole document".to_string())?;
    match parent(doc, init, pointer)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("path {pointer:?} does not exist")),
        Value::Array(a) => {
            let i = index(last, a.len(), false, pointer)?;
            Ok(a.remove(i))
        }
        _ => Err(format!("path {pointer:?} does not exist")),
    }
}

fn add_at(doc: &mut Value, pointer: &str, value: Value, replace: bool) -> Result<(), String> {
    let toks = tokens(pointer)?;
    let Some((last, init)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, init, pointer)? {
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(format!("path {pointer:?} does not exist"));
            }
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if replace {
                let i = index(last, a.len(), false, pointer)?;
                a[i] = value;
            } else {
                let i = index(last, a.len(), true, pointer)?;
                a.insert(i, value);
            }
        }
        _ => return Err(format!("path {pointer:?} does not exist")),
    }
    Ok(())
}

/// RFC 6902. The error says which operation failed and why.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    let mut doc = target.clone();
    for (n, op) in ops.iter().enumerate() {
        let field = |name: &str| -> Result<String, String> {
            op.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("operation {n}: missing {name:?}"))
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation {n}: missing \"value\""))
        };
        let kind = field("op")?;
        let path = field("path")?;
        let res = match kind.as_str() {
            "add" => add_at(&mut doc, &path, value()?, false),
            "remove" => remove_at(&mut doc, &path).map(|_| ()),
            "replace" => add_at(&mut doc, &path, value()?, true),
            "move" => {
                let from = field("from")?;
                remove_at(&mut doc, &from).and_then(|v| add_at(&mut doc, &path, v, false))
            }
            "copy" => {
                let from = field("from")?;
                get_at(&doc, &from).and_then(|v| add_at(&mut doc, &path, v, false))
            }
            "test" => {
                let want = value()?;
                match doc.pointer(&path) {
                    Some(have) if *have == want => Ok(()),
                    Some(have) => Err(format!(
                        "testing value {path} failed: have {have}, want {want}"
                    )),
                    // A missing member tests equal to null, as the API server's JSON patch
                    // library has it (kube's finalizer helper relies on this).
                    None if want.is_null() => Ok(()),
                    None => Err(format!("testing value {path} failed: path does not exist")),
                }
            }
            other => Err(format!("unknown operation {other:?}")),
        };
        res.map_err(|e| format!("operation {n} ({kind} {path}): {e}"))?;
    }
    Ok(doc)
}

/// The merge key of a list field of the built-in kinds, given the elements seen.
fn merge_key(field: &str, elems: &[&Value]) -> Option<&'static str> {
    let all_have = |k: &str| elems.iter().all(|e| e.get(k).is_some());
    let key = match field {
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "ports" if all_have("containerPort") => "containerPort",
        "ports" => "port",
        "tolerations" | "args" | "command" | "envFrom" => return None,
        _ => "name",
    };
    (!elems.is_empty() && all_have(key)).then_some(key)
}

const PRIMITIVE_SETS: &[&str] = &["finalizers"];

fn merge_list(field: &str, target: &[Value], patch: &[Value]) -> Vec<Value> {
    if patch.iter().all(Value::is_object) && !patch.is_empty() {
        let elems: Vec<&Value> = target.iter().chain(patch.iter()).collect();
        let Some(key) = merge_key(field, &elems) else {
            return patch.to_vec();
        };
        let mut out = target.to_vec();
        for p in patch {
            let k = &p[key];
            let pos = out.iter().position(|t| t.get(key) == Some(k));
            match (p.get("$patch").and_then(Value::as_str), pos) {
                (Some("delete"), Some(i)) => {
                    out.remove(i);
                }
                (Some("delete"), None) => {}
                (Some("replace"), Some(i)) => out[i] = strip_directives(p),
                (_, Some(i)) => out[i] = strategic_merge(&out[i], p),
                (_, None) => out.push(strategic_merge(&Value::Null, p)),
            }
        }
        return out;
    }
    if PRIMITIVE_SETS.contains(&field) {
        let mut out = target.to_vec();
        for p in patch {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        return out;
    }
    patch.to_vec()
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Orders `list` as `order` (elements given by merge key) says; unlisted elements keep their
/// relative order after the listed ones.
fn apply_order(field: &str, list: Vec<Value>, order: &[Value]) -> Vec<Value> {
    let elems: Vec<&Value> = order.iter().chain(list.iter()).collect();
    if !order.iter().all(Value::is_object) {
        let mut out: Vec<Value> = order.iter().filter(|o| list.contains(o)).cloned().collect();
        out.extend(list.into_iter().filter(|v| !order.contains(v)));
        return out;
    }
    let Some(key) = merge_key(field, &elems) else {
        return list;
    };
    let mut rest = list;
    let mut out = Vec::new();
    for o in order {
        if let Some(i) = rest.iter().position(|v| v.get(key) == o.get(key)) {
            out.push(rest.remove(i));
        }
    }
    out.extend(rest);
    out
}

/// Strategic merge patch as the built-in kinds define it (see the module comment).
pub fn strategic_merge(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => return strip_directives(patch),
        Some("delete") => return Value::Null,
        _ => {}
    }
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                out.remove(k);
            }
            Value::Object(_) => {
                let merged = strategic_merge(out.get(k).unwrap_or(&Value::Null), v);
                if merged.is_null() {
                    out.remove(k);
                } else {
                    out.insert(k.clone(), merged);
                }
            }
            Value::Array(items) => {
                let current = out
                    .get(k)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Array(merge_list(k, &current, items)));
            }
            other => {
                out.insert(k.clone(), other.clone());
            }
        }
    }
    for (k, v) in p {
        if let (Some(field), Some(remove)) =
            (k.strip_prefix("$deleteFromPrimitiveList/"), v.as_array())
            && let Some(Value::Array(list)) = out.get_mut(field)
        {
            list.retain(|x| !remove.contains(x));
        }
    }
    for (k, v) in p {
        if let (Some(field), Some(order)) = (k.strip_prefix("$setElementOrder/"), v.as_array())
            && let Some(Value::Array(list)) = out.remove(field)
        {
            out.insert(
                field.to_string(),
                Value::Array(apply_order(field, list, order)),
            );
        }
    }
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        out.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    Value::Object(out)
}
