use super::*;
use std::net::SocketAddr;

fn meta(port: u16) -> EndpointMeta {
    EndpointMeta {
        addr: SocketAddr::from(([10, 0, 0, 1], port)),
        namespace: None,
        workload: None,
        node: None,
        via: None,
        mesh: true,
        service_account: None,
    }
}

fn balancer(ports: &[u16], policy: OutlierPolicy) -> Balancer {
    let balancer = Balancer::new("demo/web:80", policy, Default::default());
    balancer.update(ports.iter().map(|p| meta(*p)).collect());
    balancer
}

fn picks(balancer: &Balancer, n: usize) -> std::collections::HashMap<u16, usize> {
    let mut counts = std::collections::HashMap::new();
    for _ in 0..n {
        *counts.entry(balancer.pick().unwrap().addr.port()).or_default() += 1;
    }
    counts
}

fn fail(endpoint: &Arc<Endpoint>, policy: &OutlierPolicy, times: u32) -> bool {
    (0..times).map(|_| endpoint.start().finish(Outcome::Failure, policy)).fold(false, |a, b| a | b)
}

#[test]
fn empty_balancer_picks_nothing_and_single_endpoint_always_wins() {
    assert!(balancer(&[], OutlierPolicy::default()).pick().is_none());
    assert_eq!(picks(&balancer(&[1], OutlierPolicy::default()), 10)[&1], 10);
}

#[test]
fn outstanding_requests_steer_picks_away() {
    let b = balancer(&[1, 2], OutlierPolicy::default());
    let busy = b.endpoints().iter().find(|e| e.addr.port() == 1).unwrap().clone();
    let _in_flight: Vec<_> = (0..10).map(|_| busy.start()).collect();
    // With two endpoints p2c always compares both: the idle one wins every time.
    assert_eq!(picks(&b, 200).get(&1), None);
}

#[test]
fn slow_endpoint_gets_less_traffic() {
    let policy = OutlierPolicy::default();
    let b = balancer(&[1, 2, 3], policy);
    let slow = b.endpoints().iter().find(|e| e.addr.port() == 1).unwrap().clone();
    let guard = slow.start();
    std::thread::sleep(Duration::from_millis(60)); // far above the others' estimate
    guard.finish(Outcome::Success, &policy);
    let counts = picks(&b, 3000);
    // The slow one only wins when p2c draws the two others... never: it loses every comparison
    // it is in, so it gets nothing while the others share everything.
    assert_eq!(counts.get(&1), None, "{counts:?}");
}

#[test]
fn sub_millisecond_differences_do_not_starve_an_endpoint() {
    let policy = OutlierPolicy::default();
    let b = balancer(&[1, 2], policy);
    for endpoint in b.endpoints().iter() {
        endpoint.start().finish(Outcome::Success, &policy); // both answer in microseconds
    }
    let counts = picks(&b, 2000);
    assert!(counts[&1] > 800 && counts[&2] > 800, "{counts:?}");
}

#[test]
fn a_new_endpoint_starts_at_its_peers_mean_estimate() {
    let policy = OutlierPolicy::default();
    let b = balancer(&[1], policy);
    let guard = b.endpoints()[0].start();
    std::thread::sleep(Duration::from_millis(20));
    guard.finish(Outcome::Success, &policy);
    b.update(vec![meta(1), meta(2)]);
    let fresh = b.endpoints().iter().find(|e| e.addr.port() == 2).unwrap().clone();
    assert!(fresh.estimate() >= Duration::from_millis(19), "borrowed its peer's estimate: {:?}", fresh.estimate());
}

#[test]
fn consecutive_failures_eject_and_time_readmits_with_backoff() {
    let policy = OutlierPolicy {
        consecutive_failures: 3,
        base_ejection: Duration::from_millis(100),
        max_ejection: Duration::from_secs(10),
    };
    let b = balancer(&[1, 2], policy);
    let bad = b.endpoints().iter().find(|e| e.addr.port() == 1).unwrap().clone();
    assert!(!fail(&bad, &policy, 2), "two failures are below the threshold");
    assert!(!bad.start().finish(Outcome::Success, &policy));
    assert!(!fail(&bad, &policy, 2), "a success resets the count");
    assert!(fail(&bad, &policy, 1), "the third consecutive failure ejects");
    assert_eq!(picks(&b, 200).get(&1), None, "ejected endpoints get no traffic");

    std::thread::sleep(Duration::from_millis(120));
    assert!(picks(&b, 400).contains_key(&1), "re-admitted after the ejection time");
    // Failing again right away ejects for twice as long.
    assert!(fail(&bad, &policy, 3));
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(picks(&b, 200).get(&1), None, "second ejection lasts 200 ms");
    std::thread::sleep(Duration::from_millis(100));
    assert!(picks(&b, 400).contains_key(&1));
}

#[test]
fn when_every_endpoint_is_ejected_traffic_still_flows() {
    let policy = OutlierPolicy { consecutive_failures: 1, ..OutlierPolicy::default() };
    let b = balancer(&[1, 2], policy);
    for endpoint in b.endpoints().iter() {
        assert!(fail(endpoint, &policy, 1));
    }
    assert!(b.pick().is_some());
}

#[test]
fn updates_keep_the_state_of_endpoints_that_stay() {
    let policy = OutlierPolicy { consecutive_failures: 1, ..OutlierPolicy::default() };
    let b = balancer(&[1, 2], policy);
    let first = b.endpoints().iter().find(|e| e.addr.port() == 1).unwrap().clone();
    assert!(fail(&first, &policy, 1));
    b.update(vec![meta(1), meta(3)]);
    let kept = b.endpoints().iter().find(|e| e.addr.port() == 1).unwrap().clone();
    assert!(Arc::ptr_eq(&first, &kept), "same endpoint object, same pool");
    assert!(!kept.available(now_ms()), "still ejected after the update");
    assert!(b.endpoints().iter().all(|e| e.addr.port() != 2), "removed endpoints are gone");
}

#[test]
fn retries_avoid_endpoints_already_tried() {
    let b = balancer(&[1, 2, 3], OutlierPolicy::default());
    let tried = [SocketAddr::from(([10, 0, 0, 1], 1)), SocketAddr::from(([10, 0, 0, 1], 2))];
    for _ in 0..100 {
        assert_eq!(b.pick_avoiding(&tried).unwrap().addr.port(), 3);
    }
    let all: Vec<_> = (1..=3).map(|p| SocketAddr::from(([10, 0, 0, 1], p))).collect();
    assert!(b.pick_avoiding(&all).is_some(), "with nowhere else to go, an endpoint is still picked");
}
