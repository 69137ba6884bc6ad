//! The admin listener in the in-memory driver: health, readiness, the
//! authenticated API, its caps and deadlines.

#![cfg(test)]

use super::client::{admin_answer, admin_request, cluster, shared, user_homed_on};
use super::{Cluster, SimSettings};
use crate::gateway::ADMIN_LISTENER;

#[test]
fn health_and_readiness_follow_drain_and_overload() {
    let mut c = cluster(2);
    let get = |c: &mut Cluster, path: &str| {
        c.admin(1, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
            .unwrap()
    };
    assert_eq!(get(&mut c, "/healthz"), (200, r#"{"status":"ok"}"#.into()));
    assert_eq!(get(&mut c, "/readyz").0, 200);
    c.shared.control.set_overloaded(true);
    assert_eq!(
        get(&mut c, "/readyz"),
        (503, r#"{"ready":false,"reason":"overloaded"}"#.into())
    );
    c.shared.control.set_overloaded(false);
    c.shared.control.start_drain(10);
    assert!(get(&mut c, "/readyz").1.contains("draining"));
    assert_eq!(get(&mut c, "/healthz").0, 200, "alive while draining");
    let (status, text) = get(&mut c, "/metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains("pushgate_devices_online{shard=\"1\"} 0"),
        "{text}"
    );
}

#[test]
fn the_push_api_delivers_and_counts_across_shards() {
    let mut c = cluster(3);
    let users: Vec<String> = (0..3).map(|s| user_homed_on("api", s, 3)).collect();
    let mut online = c.device(0, &users[1], None);
    let body = format!(
        r#"{{"users":["{}","{}","{}"],"data":{{"n":1}}}}"#,
        users[0], users[1], users[2]
    );
    let req = admin_request(&c, "POST", "/v1/push", &body);
    let (status, answer) = c.admin(0, &req).expect("answered");
    assert_eq!(status, 200);
    assert_eq!(answer, r#"{"delivered":1,"stored":2,"rejected":0}"#);
    assert_eq!(online.pushes(&mut c).len(), 1);
    let req = admin_request(&c, "POST", "/v1/push", r#"{"all":true,"data":"x"}"#);
    assert_eq!(
        c.admin(2, &req).unwrap().1,
        r#"{"delivered":1,"stored":0,"rejected":0}"#
    );
}

#[test]
fn the_api_refuses_client_tokens_and_bad_bodies_precisely() {
    let mut c = cluster(1);
    let client_token = c.token("admin");
    let req = format!(
        "GET /v1/presence/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {client_token}\r\n\r\n"
    );
    assert_eq!(c.admin(0, &req).unwrap().0, 401);
    let cases = [
        ("POST", "/v1/push", r#"{"users":[],"data":1}"#, 400),
        ("POST", "/v1/push", r#"{"users":["a"]}"#, 400),
        (
            "POST",
            "/v1/push",
            r#"{"users":["a"],"data":1,"extra":2}"#,
            400,
        ),
        ("POST", "/v1/push", r#"{"users":["a"],"data":{bad}"#, 400),
        ("GET", "/v1/push", "", 405),
        ("GET", "/v1/nothing", "", 404),
    ];
    for (method, path, body, want) in cases {
        let req = admin_request(&c, method, path, body);
        assert_eq!(c.admin(0, &req).unwrap().0, want, "{method} {path} {body}");
    }
    c.check_invariants();
}

#[test]
fn presence_over_http_asks_the_users_home_shard() {
    let mut c = cluster(2);
    let user = user_homed_on("who", 1, 2);
    let _d = c.device(0, &user, None);
    let req = admin_request(&c, "GET", &format!("/v1/presence/{user}"), "");
    assert_eq!(
        c.admin(0, &req).unwrap(),
        (200, r#"{"online":true,"devices":1}"#.into())
    );
}

#[test]
fn a_drain_over_the_api_takes_its_rate_or_the_configured_one() {
    let mut c = cluster(1);
    let req = admin_request(&c, "POST", "/v1/drain?rate=42", "");
    assert_eq!(
        c.admin(0, &req).unwrap(),
        (202, r#"{"draining":true,"rate_per_s":42}"#.into())
    );
    let req = admin_request(&c, "POST", "/v1/drain", "");
    assert!(c.admin(0, &req).unwrap().1.contains(":100}"));
}

#[test]
fn admin_connections_are_capped_and_a_silent_one_gets_408() {
    let mut shared = shared();
    shared.limits.admin_connections_max = 3;
    let mut c = Cluster::new(
        shared,
        SimSettings {
            shards: 1,
            ..SimSettings::default()
        },
    );
    let idle: Vec<_> = (0..3)
        .map(|_| c.connect(0, ADMIN_LISTENER).unwrap())
        .collect();
    let over = c.connect(0, ADMIN_LISTENER).unwrap();
    assert_eq!(admin_answer(&mut c, over).unwrap().0, 503);
    c.advance(10_100);
    for s in idle {
        assert_eq!(admin_answer(&mut c, s).unwrap().0, 408);
        assert!(c.is_closed(s));
    }
    let req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(c.admin(0, req).unwrap().0, 200, "room again");
    c.check_invariants();
}

#[test]
fn an_http_push_waiting_for_a_busy_shard_is_answered_at_the_deadline() {
    let mut c = cluster(2);
    let far = user_homed_on("far", 1, 2);
    c.hold(1, true);
    let s = c.admin_push_send(0, &[&far]);
    c.advance(5_100);
    let (status, body) = admin_answer(&mut c, s).expect("answered at the deadline");
    assert_eq!(status, 200);
    assert!(body.contains(r#""rejected":1"#), "{body}");
    assert!(body.contains("a shard did not answer"), "{body}");
    c.hold(1, false);
    c.check_invariants();
}

#[test]
fn an_api_request_is_authenticated_at_its_head_before_its_body_arrives() {
    let mut c = cluster(1);
    let s = c.connect(0, ADMIN_LISTENER).unwrap();
    c.write(
        s,
        b"POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer forged\r\n\
          Content-Length: 500000\r\n\r\n{\"users\":",
    );
    let (status, _) = admin_answer(&mut c, s).expect("refused before the body");
    assert_eq!(status, 401);
    assert!(c.is_closed(s));
    // With a good token the body is awaited.
    let good = admin_request(&c, "POST", "/v1/push", r#"{"users":["a"],"data":1}"#);
    let (head, body) = good.split_at(good.len() - 10);
    let s = c.connect(0, ADMIN_LISTENER).unwrap();
    c.write(s, head.as_bytes());
    assert!(admin_answer(&mut c, s).is_none());
    c.write(s, body.as_bytes());
    assert_eq!(admin_answer(&mut c, s).unwrap().0, 200);
    c.check_invariants();
}
