//! What the ReplicaSet and Deployment controllers decide, as pure functions: which pods a
//! ReplicaSet creates or deletes, and how far one step of a Deployment's rolling update may go
//! under `maxSurge` and `maxUnavailable` (Kubernetes' defaults: 25 % each, surge rounded up,
//! unavailability rounded down).

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label Deployments put on their ReplicaSets and pods (the template's hash).
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// A stable hash of a pod template, written as Kubernetes writes it: lowercase letters and
/// digits without vowels, so it never spells a word. FNV-1a over the template's JSON: the same
/// template gives the same name in every run and version of Nodus.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let json = serde_json::to_vec(template).unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for byte in json {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let mut out = String::new();
    let mut rest = hash;
    while out.len() < 8 {
        out.push(char::from(ALPHABET[(rest % ALPHABET.len() as u32) as usize]));
        rest /= ALPHABET.len() as u32;
        if rest == 0 {
            break;
        }
    }
    out
}

/// A pod as a ReplicaSet controller cares about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedPod {
    /// Pod name.
    pub name: String,
    /// Whether it is Ready.
    pub ready: bool,
    /// Whether it is bound to a node.
    pub scheduled: bool,
}

/// What a ReplicaSet controller does next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaChange {
    /// How many pods to create.
    pub create: usize,
    /// Which pods to delete.
    pub delete: Vec<String>,
}

/// The change that brings `pods` (live, not terminating) to `replicas`. Deletes the pods that
/// matter least first, as Kubernetes does: unscheduled, then not Ready, then by name from the end.
pub fn replica_change(replicas: usize, pods: &[OwnedPod]) -> ReplicaChange {
    if pods.len() <= replicas {
        return ReplicaChange { create: replicas - pods.len(), delete: Vec::new() };
    }
    let mut ranked: Vec<&OwnedPod> = pods.iter().collect();
    ranked.sort_by(|a, b| (a.scheduled, a.ready, &b.name).cmp(&(b.scheduled, b.ready, &a.name)));
    ReplicaChange { create: 0, delete: ranked.iter().take(pods.len() - replicas).map(|p| p.name.clone()).collect() }
}

/// A new pod of a ReplicaSet: its template, a generated name, and an owner reference.
pub fn pod_for(replica_set: &ReplicaSet, suffix: &str) -> Pod {
    let name = replica_set.metadata.name.clone().unwrap_or_default();
    let template = replica_set.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{suffix}")),
            namespace: replica_set.metadata.namespace.clone(),
            labels: template_meta.labels,
            annotations: template_meta.annotations,
            owner_references: Some(vec![owner(&replica_set.metadata, "apps/v1", "ReplicaSet")]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// A controller owner reference to the object `meta` describes.
pub fn owner(meta: &ObjectMeta, api_version: &str, kind: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// `maxSurge`/`maxUnavailable` against `replicas`: a number, or a percentage rounded up (surge)
/// or down (unavailable).
fn scaled(value: Option<&IntOrString>, replicas: i32, default_percent: i32, round_up: bool) -> i32 {
    let percent = |p: i32| {
        let exact = replicas * p;
        if round_up {
            (exact + 99) / 100
        } else {
            exact / 100
        }
    };
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => s.strip_suffix('%').and_then(|p| p.parse().ok()).map_or(0, percent),
        None => percent(default_percent),
    }
    .max(0)
}

/// A Deployment's `maxUnavailable`, as a number of pods (25 % of its replicas, rounded down,
/// when not set).
pub fn max_unavailable(deployment: &Deployment) -> i32 {
    let spec = deployment.spec.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1).max(0);
    let rolling = spec.and_then(|s| s.strategy.as_ref()?.rolling_update.as_ref());
    scaled(rolling.and_then(|r| r.max_unavailable.as_ref()), desired, 25, false)
}

/// A ReplicaSet of a Deployment, as one rollout step sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutSet {
    /// ReplicaSet name.
    pub name: String,
    /// Its `spec.replicas`.
    pub replicas: i32,
    /// Its Ready pods.
    pub ready: i32,
}

/// One step of a rolling update: the new ReplicaSet's replica count and each old one's. Scale
/// up the new set while the total stays within `replicas + maxSurge`; scale old sets down while
/// Ready pods stay at least `replicas - maxUnavailable` (old sets' not-Ready pods go first).
/// `Recreate` scales old sets to zero first and the new one up once they are gone.
pub fn rollout_step(deployment: &Deployment, new: &RolloutSet, old: &[RolloutSet]) -> (i32, Vec<(String, i32)>) {
    let spec = deployment.spec.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1).max(0);
    let strategy = spec.and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        let old_left: i32 = old.iter().map(|o| o.replicas).sum();
        let new_replicas = if old_left == 0 { desired } else { 0 };
        return (new_replicas, old.iter().map(|o| (o.name.clone(), 0)).collect());
    }
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let mut surge = scaled(rolling.and_then(|r| r.max_surge.as_ref()), desired, 25, true);
    let unavailable = max_unavailable(deployment);
    if surge == 0 && unavailable == 0 {
        // Kubernetes refuses both zero; progress needs one of them.
        surge = 1;
    }
    let old_total: i32 = old.iter().map(|o| o.replicas).sum();
    let room = (desired + surge - old_total - new.replicas).max(0);
    let new_replicas = if old.is_empty() { desired } else { (new.replicas + room).min(desired) };

    let min_available = desired - unavailable;
    let ready_total: i32 = new.ready + old.iter().map(|o| o.ready).sum::<i32>();
    let mut may_remove = (ready_total - min_available).max(0);
    let mut old_scaled = Vec::new();
    for set in old {
        // Pods of old sets that are not Ready cost no availability: remove them first.
        let unready = (set.replicas - set.ready).max(0);
        let ready_removed = may_remove.min(set.ready);
        may_remove -= ready_removed;
        old_scaled.push((set.name.clone(), (set.replicas - unready - ready_removed).max(0)));
    }
    (new_replicas, old_scaled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i32, strategy: &str) -> Deployment {
        serde_norway::from_str(&format!(
            "metadata: {{ name: web }}\nspec: {{ replicas: {replicas}, selector: {{ matchLabels: {{ app: web }} }}, strategy: {strategy}, template: {{}} }}"
        ))
        .unwrap()
    }

    fn set(name: &str, replicas: i32, ready: i32) -> RolloutSet {
        RolloutSet { name: name.into(), replicas, ready }
    }

    #[test]
    fn the_template_hash_is_stable_and_changes_with_the_template() {
        let a: PodTemplateSpec =
            serde_norway::from_str("spec: { containers: [{ name: web, image: nodus-echo }] }").unwrap();
        let b: PodTemplateSpec = serde_norway::from_str("spec: { containers: [{ name: web, image: other }] }").unwrap();
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert!(template_hash(&a).bytes().all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
    }

    #[test]
    fn replica_sets_create_the_missing_and_delete_the_least_useful_first() {
        let pod = |name: &str, scheduled, ready| OwnedPod { name: name.into(), scheduled, ready };
        assert_eq!(replica_change(3, &[pod("a", true, true)]), ReplicaChange { create: 2, delete: vec![] });
        let pods = [pod("a", true, true), pod("b", true, false), pod("c", false, false), pod("d", true, true)];
        assert_eq!(replica_change(2, &pods).delete, ["c", "b"]);
        assert_eq!(replica_change(1, &pods).delete, ["c", "b", "d"], "among equals, the last name goes first");
    }

    #[test]
    fn a_rolling_update_stays_within_surge_and_unavailability() {
        // 4 replicas, defaults: surge 1 (25 % rounded up), unavailable 1 (rounded down).
        let web = deployment(4, "{ type: RollingUpdate }");
        // Start: new set at 0, old at 4 all Ready. Surge allows one new pod; one old may go.
        assert_eq!(rollout_step(&web, &set("new", 0, 0), &[set("old", 4, 4)]), (1, vec![("old".into(), 3)]));
        // Total may reach 5: the new set grows to 2; its pod is not Ready, so no old pod may go.
        assert_eq!(rollout_step(&web, &set("new", 1, 0), &[set("old", 3, 3)]), (2, vec![("old".into(), 3)]));
        // One new pod is Ready: one more old pod may go; the total is at its ceiling.
        assert_eq!(rollout_step(&web, &set("new", 2, 1), &[set("old", 3, 3)]), (2, vec![("old".into(), 2)]));
        assert_eq!(rollout_step(&web, &set("new", 2, 2), &[set("old", 2, 2)]), (3, vec![("old".into(), 1)]));
        // Not-Ready old pods go at once, costing no availability.
        assert_eq!(rollout_step(&web, &set("new", 3, 3), &[set("old", 1, 0)]), (4, vec![("old".into(), 0)]));
        // No old sets: straight to the desired count.
        assert_eq!(rollout_step(&web, &set("new", 0, 0), &[]), (4, vec![]));
    }

    #[test]
    fn explicit_surge_and_unavailability_and_recreate() {
        let zero_down = deployment(2, "{ type: RollingUpdate, rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } }");
        assert_eq!(rollout_step(&zero_down, &set("new", 0, 0), &[set("old", 2, 2)]), (1, vec![("old".into(), 2)]));
        let percent =
            deployment(10, "{ type: RollingUpdate, rollingUpdate: { maxSurge: '50%', maxUnavailable: '0%' } }");
        assert_eq!(rollout_step(&percent, &set("new", 0, 0), &[set("old", 10, 10)]).0, 5);
        let recreate = deployment(3, "{ type: Recreate }");
        assert_eq!(rollout_step(&recreate, &set("new", 0, 0), &[set("old", 3, 3)]), (0, vec![("old".into(), 0)]));
        assert_eq!(rollout_step(&recreate, &set("new", 0, 0), &[set("old", 0, 0)]), (3, vec![("old".into(), 0)]));
    }
}
