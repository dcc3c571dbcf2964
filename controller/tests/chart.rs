//! The Helm chart (charts/nodus), rendered and linted by real Helm (`scripts/setup-helm.sh`
//! puts the upstream binary in .cache/helm/bin; `make test` runs it).
//!
//! What this covers: the chart lints strictly; it renders with default and non-default values;
//! the controller's RBAC is exactly what the controller uses (least privilege); the node
//! DaemonSet has the host mounts and capabilities the eBPF redirect needs and no more; the
//! rendered command lines are accepted by the real `nodus-controller` and `nodus-proxy`
//! binaries; the ServiceMonitor selects the node proxies; every value is documented.
//! What it does not: install into a cluster (there is none here; kapi has no workload
//! controllers or RBAC), pull an image, or run the DaemonSet on a real kubelet.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Helm, or None (with a visible SKIPPED) where it is not set up and not required.
fn helm() -> Option<PathBuf> {
    let path = std::env::var_os("NODUS_HELM").map(PathBuf::from).unwrap_or_else(|| root().join(".cache/helm/bin/helm"));
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("NODUS_REQUIRE_HELM").is_none(),
        "NODUS_REQUIRE_HELM is set but {} does not exist: run scripts/setup-helm.sh",
        path.display()
    );
    eprintln!("SKIPPED: Helm not found at {} (run scripts/setup-helm.sh)", path.display());
    None
}

fn render(helm: &Path, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(helm)
        .args(["template", "nodus", "charts/nodus", "--namespace", "nodus-system"])
        .args(extra)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---")
        .filter_map(|doc| {
            let value: Value = serde_norway::from_str(doc).ok()?;
            value.is_object().then_some(value)
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// (group, resource, verb) triples a set of RBAC rules grants.
fn grants(rules: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().unwrap() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

/// Kubernetes' `$(VAR)` expansion of container args, with the values a kubelet would give.
fn expand(args: &[String]) -> Vec<String> {
    args.iter().map(|a| a.replace("$(NODE_NAME)", "node-1").replace("$(HOST_IP)", "10.0.0.7")).collect()
}

/// The real binary accepts these arguments: clap parses (and validates) every argument before
/// the final `--help`, and exits 2 on any unknown or malformed one.
fn accepted_by(binary: &Path, args: &[String]) {
    let out = Command::new(binary).args(args).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{} rejects the chart's arguments {args:?}: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_chart_lints_and_renders_least_privilege_objects_the_binaries_accept() {
    let Some(helm) = helm() else { return };
    let lint = Command::new(&helm).args(["lint", "--strict", "charts/nodus"]).current_dir(root()).output().unwrap();
    assert!(
        lint.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let objects = render(&helm, &[]);
    let kinds: BTreeSet<String> = objects
        .iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
        .collect();
    for expected in [
        "ServiceAccount/nodus-controller",
        "ServiceAccount/nodus-node",
        "ClusterRole/nodus-controller",
        "ClusterRoleBinding/nodus-controller",
        "Role/nodus-controller-ca",
        "RoleBinding/nodus-controller-ca",
        "Deployment/nodus-controller",
        "Service/nodus-controller",
        "DaemonSet/nodus-node",
        "Service/nodus-node-metrics",
    ] {
        assert!(kinds.contains(expected), "{expected} missing from {kinds:?}");
    }
    assert!(!kinds.iter().any(|k| k.starts_with("ServiceMonitor/")), "no ServiceMonitor unless enabled");
    for object in &objects {
        if object["kind"] != "ClusterRole" && object["kind"] != "ClusterRoleBinding" {
            assert_eq!(object["metadata"]["namespace"], "nodus-system", "{}", object["metadata"]["name"]);
        }
    }

    // RBAC: exactly what the controller uses, no wildcard, secrets only in its namespace.
    let cluster_role = find(&objects, "ClusterRole", "nodus-controller");
    let granted = grants(&cluster_role["rules"]);
    let used: BTreeSet<(String, String, String)> = nodus_controller::kube_io::CLUSTER_ACCESS
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs.iter().map(|v| (group.to_string(), resource.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(granted, used, "the ClusterRole grants exactly what kube_io uses");
    assert!(!granted.iter().any(|(g, r, v)| g == "*" || r == "*" || v == "*"));
    assert!(!granted.iter().any(|(_, r, _)| r == "secrets"), "no cluster-wide Secret access");
    let role = find(&objects, "Role", "nodus-controller-ca");
    let secret_verbs: BTreeSet<String> = grants(&role["rules"])
        .into_iter()
        .map(|(_, r, v)| {
            assert_eq!(r, "secrets");
            v
        })
        .collect();
    let expected: BTreeSet<String> =
        nodus_controller::kube_io::CA_SECRET_ACCESS.iter().map(|v| v.to_string()).collect();
    assert_eq!(secret_verbs, expected);
    for rule in role["rules"].as_array().unwrap() {
        if strings(&rule["verbs"]) != ["create"] {
            assert_eq!(strings(&rule["resourceNames"]), ["nodus-ca"], "reads and updates only the CA Secret");
        }
    }
    let node_account = find(&objects, "ServiceAccount", "nodus-node");
    assert_eq!(node_account["automountServiceAccountToken"], false, "node proxies need no API access");

    // The node DaemonSet: host network, the mounts and capabilities the redirect needs.
    let daemonset = find(&objects, "DaemonSet", "nodus-node");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false, "capabilities, not privileged");
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let capabilities: BTreeSet<String> = strings(&security["capabilities"]["add"]).into_iter().collect();
    assert_eq!(capabilities, ["BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"].map(String::from).into());
    let host_paths: BTreeSet<String> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str().map(String::from))
        .collect();
    assert_eq!(
        host_paths,
        ["/sys/fs/bpf", "/sys/fs/cgroup", "/var/run/netns", "/var/run/nodus"].map(String::from).into()
    );
    // Upgrades hand the listening sockets over: a surge pod beside the old one (so no host
    // ports, which would keep it off the node), the hand-over socket in the shared host
    // directory, the old process waiting for its deletion after draining, within the grace
    // period Kubernetes gives it.
    let strategy = &daemonset["spec"]["updateStrategy"];
    assert_eq!(strategy["rollingUpdate"]["maxSurge"], 1, "{strategy}");
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 0, "{strategy}");
    assert!(container["ports"].is_null(), "host ports would block the surge pod: {}", container["ports"]);
    let proxy_args = strings(&container["args"]);
    assert!(proxy_args.contains(&"--handoff-socket=/var/run/nodus/handoff.sock".to_string()), "{proxy_args:?}");
    assert!(proxy_args.contains(&"--linger-after-handoff".to_string()), "{proxy_args:?}");
    let drain: u64 =
        proxy_args.iter().find_map(|a| a.strip_prefix("--drain-grace-secs=")).expect("a drain grace").parse().unwrap();
    assert!(drain < pod["terminationGracePeriodSeconds"].as_u64().unwrap(), "the drain fits the grace period");
    let selector = &daemonset["spec"]["selector"]["matchLabels"];
    for (key, value) in selector.as_object().unwrap() {
        assert_eq!(&pod_labels(daemonset)[key], value, "the selector matches the pod template");
    }

    // The command lines run: the real binaries accept every rendered argument.
    let controller_binary = PathBuf::from(env!("CARGO_BIN_EXE_nodus-controller"));
    let proxy_binary = controller_binary.with_file_name("nodus-proxy");
    assert!(proxy_binary.exists(), "{} not built (cargo build --workspace)", proxy_binary.display());
    accepted_by(&proxy_binary, &expand(&strings(&container["args"])));
    let deployment = find(&objects, "Deployment", "nodus-controller");
    let controller = &deployment["spec"]["template"]["spec"]["containers"][0];
    accepted_by(&controller_binary, &expand(&strings(&controller["args"])));
    let args = strings(&container["args"]);
    assert!(args.contains(&"--controller=http://nodus-controller.nodus-system.svc:15012".to_string()), "{args:?}");
    // Node proxies authenticate with a projected token of their account, made for the audience
    // the controller reviews tokens for; the controller accepts exactly that account.
    let controller_args = strings(&controller["args"]);
    assert!(
        controller_args
            .contains(&format!("--node-service-account=nodus-system/{}", pod["serviceAccountName"].as_str().unwrap())),
        "{controller_args:?}"
    );
    let audience = controller_args.iter().find_map(|a| a.strip_prefix("--node-token-audience=")).expect("an audience");
    let token_file = args.iter().find_map(|a| a.strip_prefix("--node-token-file=")).expect("a node token file");
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| token_file.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the token file is mounted");
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    let projected = &volume["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(projected["audience"], audience, "{volume}");
    assert!(token_file.ends_with(projected["path"].as_str().unwrap()));
    assert_eq!(
        find(&objects, "Service", "nodus-controller")["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"],
        "the controller Service selects the controller pods"
    );
}

fn pod_labels(workload: &Value) -> &serde_json::Map<String, Value> {
    workload["spec"]["template"]["metadata"]["labels"].as_object().unwrap()
}

#[test]
fn values_change_what_is_rendered_and_the_service_monitor_selects_the_node_proxies() {
    let Some(helm) = helm() else { return };
    let objects = render(
        &helm,
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.labels.release=prometheus",
            "--set",
            "trustDomain=example.org",
            "--set",
            "node.podsCgroup=/sys/fs/cgroup/kubepods",
            "--set",
            "image.tag=1.2.3",
        ],
    );
    let monitor = find(&objects, "ServiceMonitor", "nodus-node");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let metrics = find(&objects, "Service", "nodus-node-metrics");
    let daemonset = find(&objects, "DaemonSet", "nodus-node");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&metrics["metadata"]["labels"][key], value, "the monitor selects the metrics Service");
    }
    for (key, value) in metrics["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels(daemonset)[key], value, "the metrics Service selects the proxies");
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], metrics["spec"]["ports"][0]["name"]);
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&container["args"]);
    assert!(args.contains(&"--trust-domain=example.org".to_string()), "{args:?}");
    assert!(args.contains(&"--redirect-cgroup=/sys/fs/cgroup/kubepods".to_string()), "{args:?}");
    assert!(container["image"].as_str().unwrap().ends_with(":1.2.3"));

    // CRDs come with the chart (crds/, generated from the Rust types: tests/crds_in_sync.rs).
    let with_crds = render(&helm, &["--include-crds"]);
    let crds: BTreeSet<&str> = with_crds
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(crds, ["authorizationpolicies.policy.nodus.dev", "meshpolicies.policy.nodus.dev"].into());
}

#[test]
fn every_value_is_documented() {
    // values.yaml is the chart's reference: each key has a comment right above it.
    let text = std::fs::read_to_string(root().join("charts/nodus/values.yaml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let is_key = !trimmed.starts_with('#') && !trimmed.starts_with('-') && trimmed.contains(':');
        // Settings are documented at the top two levels; deeper keys (resources.requests...)
        // are the Kubernetes fields their documented parent names.
        if !is_key || indent > 2 {
            continue;
        }
        let previous = lines[..index].iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim_start());
        assert!(
            previous.is_some_and(|p| p.starts_with('#')),
            "values.yaml line {}: `{}` has no comment above it",
            index + 1,
            line.trim()
        );
    }
}
