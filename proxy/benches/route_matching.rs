//! Micro-benchmarks of the request path's pure parts: route matching with 1,000 routes, header
//! filters, and swapping in a new config snapshot.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use nodus_config::{ConfigSnapshot, HeaderModifier, NameValue};
use nodus_policy::routes::{RequestView, RouteTable};
use nodus_proxy::balance::OutlierPolicy;
use nodus_proxy::state::ConfigStore;
use std::hint::black_box;

/// 1,000 HTTPRoutes on one Service: a third exact paths, a third prefixes three elements deep,
/// a third prefixes with a header condition.
fn snapshot(routes: usize) -> ConfigSnapshot {
    let mut yaml = String::from(
        "services:\n  - id: { namespace: demo, name: web }\n    clusterIps: [10.96.0.10]\n    ports: [{ port: 80, targetPort: 8080 }]\n    endpoints: [{ address: 10.244.1.2 }]\nhttpRoutes:\n",
    );
    for i in 0..routes {
        let matches = match i % 3 {
            0 => format!("[{{ path: {{ type: Exact, value: /exact/{i} }} }}]"),
            1 => format!("[{{ path: {{ type: PathPrefix, value: /api/v{i}/items }} }}]"),
            _ => format!(
                "[{{ path: {{ type: PathPrefix, value: /tenant/{i} }}, headers: [{{ name: x-tenant, match: {{ type: Exact, value: t{i} }} }}] }}]"
            ),
        };
        yaml.push_str(&format!(
            "  - id: {{ namespace: demo, name: r{i} }}\n    parents: [{{ service: {{ namespace: demo, name: web }} }}]\n    rules: [{{ matches: {matches}, backends: [{{ service: {{ namespace: demo, name: web }}, port: 80 }}] }}]\n"
        ));
    }
    serde_norway::from_str(&yaml).unwrap()
}

fn route_matching(c: &mut Criterion) {
    let snapshot = snapshot(1000);
    snapshot.validate().unwrap();
    let table = RouteTable::<()>::compile(&snapshot, &|_, _| None).unwrap();
    let routes = table.port("demo", "web", 80).unwrap().for_client(Some("demo"));
    let mut tenant_headers = HeaderMap::new();
    tenant_headers.insert("x-tenant", HeaderValue::from_static("t500"));
    let empty = HeaderMap::new();
    let cases: [(&str, &str, &HeaderMap, bool); 4] = [
        ("exact hit", "/exact/999", &empty, true),
        ("prefix hit, 5 elements deep", "/api/v499/items/42/detail", &empty, true),
        ("prefix + header hit", "/tenant/500/orders", &tenant_headers, true),
        ("miss", "/nothing/here/at/all", &empty, false),
    ];
    let mut group = c.benchmark_group("route_matching_1000_routes");
    for (name, path, headers, hit) in cases {
        let view = RequestView { method: &Method::GET, path, query: None, host: Some("web"), headers };
        assert_eq!(routes.find(&view, false).is_some(), hit, "{name}");
        group.bench_function(name, |b| b.iter(|| black_box(routes.find(black_box(&view), false)).is_some()));
    }
    group.finish();

    c.bench_function("compile_1000_routes", |b| {
        b.iter(|| RouteTable::<()>::compile(black_box(&snapshot), &|_, _| None).unwrap())
    });
}

fn header_filters(c: &mut Criterion) {
    let modifier = HeaderModifier {
        set: vec![NameValue { name: "x-route".into(), value: "canary".into() }],
        add: vec![NameValue { name: "x-trace".into(), value: "1".into() }],
        remove: vec!["x-internal".into()],
    };
    let mut base = HeaderMap::new();
    for i in 0..10 {
        base.insert(http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(), HeaderValue::from_static("v"));
    }
    base.insert("x-internal", HeaderValue::from_static("secret"));
    c.bench_function("request_header_modifier_12_headers", |b| {
        b.iter_batched(
            || base.clone(),
            |mut headers| {
                nodus_policy::filters::modify_headers(&mut headers, &modifier);
                headers
            },
            BatchSize::SmallInput,
        )
    });
}

fn snapshot_swap(c: &mut Criterion) {
    let store = ConfigStore::new(OutlierPolicy::default());
    let small = snapshot(10);
    let large = snapshot(1000);
    c.bench_function("apply_snapshot_10_routes", |b| b.iter(|| store.apply(small.clone()).unwrap()));
    c.bench_function("apply_snapshot_1000_routes", |b| b.iter(|| store.apply(large.clone()).unwrap()));
    // What a request pays to see the config: one atomic load.
    c.bench_function("load_current_snapshot", |b| b.iter(|| black_box(store.load())));
}

criterion_group!(benches, route_matching, header_filters, snapshot_swap);
criterion_main!(benches);
