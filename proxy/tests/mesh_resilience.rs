//! Retries, config changes under load, and rejected configs, end to end. Needs root.
#![allow(clippy::unwrap_used)]

mod support;

use nodus_harness::{metric_value, skip_unless_lab_supported};
use std::time::{Duration, Instant};
use support::*;

fn rule(name: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"
      - name: {name}
        matches: [{{ path: {{ type: PathPrefix, value: {prefix} }} }}]
        backends: [{{ service: {{ namespace: demo, name: echo }}, port: 80 }}]{extra}"#
    )
}

fn routes(rules: &[String]) -> String {
    format!(
        r#"
httpRoutes:
  - id: {{ namespace: demo, name: r }}
    parents: [{{ service: {{ namespace: demo, name: echo }}, port: 80 }}]
    rules:{}
"#,
        rules.concat()
    )
}

fn statuses(outcomes: &[serde_json::Value]) -> std::collections::BTreeMap<u64, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for o in outcomes {
        *counts.entry(o["status"].as_u64().unwrap()).or_default() += 1;
    }
    counts
}

#[test]
fn without_retries_a_failing_replica_fails_requests() {
    skip_unless_lab_supported!();
    // Control for the retry test: same failing replica, no retry policy.
    let mesh = start(&routes(&[rule("plain", "/", "")]), &[]);
    let target = format!("{ECHO}:80");
    let outcomes = client(&mesh, &["--target", &target, "--count", "40", "-H", "x-echo-fail-pod:echo-v1"]);
    assert!(
        statuses(&outcomes).contains_key(&503),
        "echo-v1 answers 503 until it is ejected: {:?}",
        statuses(&outcomes)
    );
}

#[test]
fn retries_recover_from_a_failing_replica_within_the_budget() {
    skip_unless_lab_supported!();
    let retry = "\n        retry: { codes: [503], attempts: 3, backoff: 10ms }";
    let mesh = start(&routes(&[rule("retried", "/", retry)]), &[]);
    let target = format!("{ECHO}:80");
    let outcomes = client(&mesh, &["--target", &target, "--count", "200", "-H", "x-echo-fail-pod:echo-v1"]);
    let counts = statuses(&outcomes);
    assert_eq!(counts.get(&200), Some(&200), "every request recovers: {counts:?}");
    let (_, metrics) = mesh.proxy.admin_get("/metrics").unwrap();
    let sent =
        metric_value(&metrics, r#"nodus_retries_total{route_name="demo/r",route_rule="retried",outcome="sent"}"#);
    assert!(sent.unwrap_or(0.0) >= 1.0, "retries were sent: {metrics}");
    let ejected = metric_value(&metrics, r#"nodus_endpoint_ejections_total{backend="demo/echo:80"}"#);
    assert!(ejected.unwrap_or(0.0) >= 1.0, "outlier detection ejected echo-v1: {metrics}");
    // Ejection, not luck, carries the later requests: after it, echo-v1 answers nothing.
    let tail = &outcomes[150..];
    assert!(tail.iter().all(|o| o["pod"] == "echo-v2"), "{:?}", by_pod(tail));
}

#[test]
fn routes_and_weights_change_under_load_without_a_failed_request() {
    skip_unless_lab_supported!();
    let weighted = |v1: u32, v2: u32| {
        format!(
            r#"
httpRoutes:
  - id: {{ namespace: demo, name: split }}
    parents: [{{ service: {{ namespace: demo, name: echo }}, port: 80 }}]
    rules:
      - backends:
          - {{ service: {{ namespace: demo, name: echo-v1 }}, port: 80, weight: {v1} }}
          - {{ service: {{ namespace: demo, name: echo-v2 }}, port: 80, weight: {v2} }}
"#
        )
    };
    let mesh = start(&weighted(100, 0), &[]);
    let target = format!("{ECHO}:80");
    let client_pod = mesh.client.clone();
    let load = std::thread::spawn(move || {
        client_in(&client_pod, &["--target", &target, "--duration-secs", "4", "--rate", "300", "--report-every", "10"])
    });
    // Swap the config ten times a second while the load runs: weights flip, versions climb.
    let started = Instant::now();
    let mut version = 2;
    while started.elapsed() < Duration::from_millis(3800) {
        let (v1, v2) = if version % 2 == 0 { (0, 100) } else { (100, 0) };
        write_config(&mesh.config_path, &format!("{}{}", base_config(version), weighted(v1, v2)));
        version += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let summaries = load.join().unwrap();
    let requests: u64 = summaries.iter().map(|s| s["requests"].as_u64().unwrap()).sum();
    let ok: u64 = summaries.iter().map(|s| s["ok"].as_u64().unwrap()).sum();
    assert!(requests > 800, "the load ran: {summaries:?}");
    assert_eq!(ok, requests, "no failed request while the config changed {version} times: {summaries:?}");
    let pods: std::collections::BTreeSet<&str> =
        summaries.iter().flat_map(|s| s["by_pod"].as_object().unwrap().keys().map(String::as_str)).collect();
    assert_eq!(pods.len(), 2, "both versions served as the weights flipped: {pods:?}");
    let (_, metrics) = mesh.proxy.admin_get("/metrics").unwrap();
    assert!(metric_value(&metrics, "nodus_config_version").unwrap() >= 10.0);
}

#[test]
fn rejected_configs_leave_the_last_good_one_in_force() {
    skip_unless_lab_supported!();
    let mesh = start(&routes(&[rule("all", "/", "")]), &[]);
    let target = format!("{ECHO}:80");
    let bad_configs = [
        "this: is: not yaml: [".to_owned(),
        // Valid YAML, invalid config: a backend Service that does not exist.
        format!(
            "{}{}",
            base_config(2),
            routes(&[r#"
      - backends: [{ service: { namespace: demo, name: missing }, port: 80 }]"#
                .to_owned()])
        ),
    ];
    for (index, bad) in bad_configs.iter().enumerate() {
        write_config(&mesh.config_path, bad);
        mesh.proxy
            .wait_for_metric(
                r#"nodus_config_updates_total{result="rejected"}"#,
                (index + 1) as f64,
                Duration::from_secs(5),
            )
            .unwrap();
        let (status, ready) = mesh.proxy.admin_get("/ready").unwrap();
        assert_eq!((status, ready.trim()), (200, "ready: config version 1"));
        let outcomes = client(&mesh, &["--target", &target, "--count", "10"]);
        assert!(outcomes.iter().all(|o| o["status"] == 200), "traffic still flows: {outcomes:?}");
    }
    let (_, dump) = mesh.proxy.debug_get("/config_dump").unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["snapshot"]["httpRoutes"][0]["id"]["name"], "r");
}
