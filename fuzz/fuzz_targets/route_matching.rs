//! Route matching on arbitrary requests against a table with every match type (exact, prefix,
//! regex paths; exact and regex headers and query parameters; methods; gRPC service/method):
//! never panics, and a match on a `PathPrefix` rule reports a prefix of the path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodus_config::ConfigSnapshot;
use nodus_fuzz::FuzzRequest;
use nodus_policy::routes::{PortRoutes, RouteTable};
use std::sync::{Arc, OnceLock};

const CONFIG: &str = r#"
services:
  - id: { namespace: demo, name: web }
    clusterIps: [10.96.0.10]
    ports: [{ port: 80, targetPort: 8080 }]
    endpoints: [{ address: 10.244.1.2 }]
httpRoutes:
  - id: { namespace: demo, name: paths }
    parents: [{ service: { namespace: demo, name: web } }]
    rules:
      - matches: [{ path: { type: Exact, value: /exact } }]
        backends: [{ service: { namespace: demo, name: web }, port: 80 }]
      - matches: [{ path: { type: PathPrefix, value: /api/v1 }, method: POST }]
        backends: [{ service: { namespace: demo, name: web }, port: 80 }]
      - matches: [{ path: { type: RegularExpression, value: "/users/[0-9]+/(orders|items)" } }]
        backends: [{ service: { namespace: demo, name: web }, port: 80 }]
      - matches:
          - path: { type: PathPrefix, value: / }
            headers: [{ name: x-tenant, match: { type: RegularExpression, value: "t[a-z]{1,8}" } }]
            queryParams: [{ name: debug, match: { type: Exact, value: "1" } }]
        backends: [{ service: { namespace: demo, name: web }, port: 80 }]
grpcRoutes:
  - id: { namespace: demo, name: grpc }
    parents: [{ service: { namespace: demo, name: web } }]
    rules:
      - matches: [{ method: { service: nodus.echo.v1.Echo, method: Echo } }]
        backends: [{ service: { namespace: demo, name: web }, port: 80 }]
"#;

fn routes() -> &'static Arc<PortRoutes<()>> {
    static ROUTES: OnceLock<Arc<PortRoutes<()>>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let snapshot: ConfigSnapshot = serde_norway::from_str(CONFIG).expect("the fixed config parses");
        snapshot.validate().expect("the fixed config is valid");
        let table = RouteTable::<()>::compile(&snapshot, &|_, _| None).expect("the fixed config compiles");
        table.port("demo", "web", 80).expect("routes on demo/web:80").clone()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(request) = FuzzRequest::parse(data) else { return };
    let view = request.view();
    for grpc in [false, true] {
        if let Some(found) = routes().for_client(Some("demo")).find(&view, grpc) {
            if let Some(prefix) = found.matched_prefix {
                assert!(
                    prefix.as_ref() == "/" || request.path.starts_with(prefix.as_ref()),
                    "prefix {prefix} matched path {}",
                    request.path
                );
            }
        }
    }
});
