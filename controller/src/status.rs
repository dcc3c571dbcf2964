//! Route status in Gateway API form: `status.parents`, one entry per Service parent, with the
//! `Accepted` and `ResolvedRefs` conditions.
//!
//! Entries of other controllers are kept as they are. A condition keeps its
//! `lastTransitionTime` while its status is unchanged, and [`desired_parents`] returns `None`
//! when nothing would change, so an unchanged route is never written (no write storms).

use crate::translate::{Condition, ParentRef, RouteStatus, CONTROLLER_NAME};
use serde_json::{json, Value};

fn parent_ref_json(p: &ParentRef) -> Value {
    let mut object = serde_json::Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            object.insert(key.to_string(), value);
        }
    };
    put("group", p.group.clone().map(Value::from));
    put("kind", p.kind.clone().map(Value::from));
    put("namespace", p.namespace.clone().map(Value::from));
    put("name", Some(Value::from(p.name.clone())));
    put("port", p.port.map(Value::from));
    put("sectionName", p.section_name.clone().map(Value::from));
    Value::Object(object)
}

fn condition_json(kind: &str, c: &Condition, generation: Option<i64>, previous: Option<&Value>, now: &str) -> Value {
    let status = if c.status { "True" } else { "False" };
    // The transition time moves only when the status does.
    let transition = previous
        .filter(|p| p.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|p| p.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| Value::from(now));
    json!({
        "type": kind,
        "status": status,
        "reason": c.reason,
        "message": c.message,
        "observedGeneration": generation.unwrap_or(0),
        "lastTransitionTime": transition,
    })
}

fn ours(entry: &Value) -> bool {
    entry.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
}

/// Compares entries without the transition times.
fn comparable(entries: &[Value]) -> Vec<Value> {
    entries
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if let Some(conditions) = e.get_mut("conditions").and_then(Value::as_array_mut) {
                for c in conditions {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("lastTransitionTime");
                    }
                }
            }
            e
        })
        .collect()
}

/// The full `status.parents` list to write, given the current one (`existing`, as JSON), or
/// `None` if it already says what `status` says. `now` is an RFC 3339 time.
pub fn desired_parents(existing: &[Value], status: Option<&RouteStatus>, now: &str) -> Option<Vec<Value>> {
    let previous_ours: Vec<&Value> = existing.iter().filter(|e| ours(e)).collect();
    let mine: Vec<Value> = status
        .map(|s| {
            s.parents
                .iter()
                .map(|p| {
                    let parent_ref = parent_ref_json(&p.parent_ref);
                    let previous = previous_ours.iter().find(|e| e.get("parentRef") == Some(&parent_ref));
                    let previous_condition = |kind: &str| {
                        previous
                            .and_then(|e| e.get("conditions"))
                            .and_then(Value::as_array)
                            .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(kind)))
                    };
                    json!({
                        "parentRef": parent_ref,
                        "controllerName": CONTROLLER_NAME,
                        "conditions": [
                            condition_json("Accepted", &p.accepted, s.generation, previous_condition("Accepted"), now),
                            condition_json("ResolvedRefs", &p.resolved_refs, s.generation, previous_condition("ResolvedRefs"), now),
                        ],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let previous_ours: Vec<Value> = previous_ours.into_iter().cloned().collect();
    if comparable(&previous_ours) == comparable(&mine) {
        return None;
    }
    let mut parents: Vec<Value> = existing.iter().filter(|e| !ours(e)).cloned().collect();
    parents.extend(mine);
    Some(parents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ParentStatus;

    fn status(accepted: bool) -> RouteStatus {
        RouteStatus {
            generation: Some(2),
            parents: vec![ParentStatus {
                parent_ref: ParentRef {
                    group: Some(String::new()),
                    kind: Some("Service".into()),
                    namespace: None,
                    name: "web".into(),
                    port: Some(80),
                    section_name: None,
                },
                accepted: if accepted {
                    Condition { status: true, reason: "Accepted".into(), message: String::new() }
                } else {
                    Condition { status: false, reason: "UnsupportedValue".into(), message: "bad".into() }
                },
                resolved_refs: Condition { status: true, reason: "ResolvedRefs".into(), message: String::new() },
            }],
        }
    }

    #[test]
    fn unchanged_status_is_not_rewritten_and_transition_times_stick() {
        let other = json!({"controllerName": "example.com/gateway", "parentRef": {"name": "gw"}, "conditions": []});
        let first = desired_parents(std::slice::from_ref(&other), Some(&status(true)), "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(first.len(), 2, "another controller's entry is kept");
        assert_eq!(first[0], other);
        assert!(
            desired_parents(&first, Some(&status(true)), "2026-01-02T00:00:00Z").is_none(),
            "no write when nothing changed"
        );

        let failed = desired_parents(&first, Some(&status(false)), "2026-01-03T00:00:00Z").unwrap();
        let conditions = failed[1]["conditions"].as_array().unwrap();
        assert_eq!(conditions[0]["reason"], "UnsupportedValue");
        assert_eq!(conditions[0]["lastTransitionTime"], "2026-01-03T00:00:00Z", "Accepted flipped: new time");
        assert_eq!(conditions[1]["lastTransitionTime"], "2026-01-01T00:00:00Z", "ResolvedRefs did not: old time");

        let removed = desired_parents(&failed, None, "2026-01-04T00:00:00Z").unwrap();
        assert_eq!(removed, vec![other], "our entries go when the route no longer attaches to a Service");
    }
}
