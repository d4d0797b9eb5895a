//! `KubeRuntime` against a scripted API server: the exact requests it makes
//! for each operation, answered with responses in the API server's format
//! (testdata/, Kubernetes 1.32 shapes). Not a live cluster.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use super::mock::{Exchange, Script};
use super::{KubeConfig, KubeRuntime};
use crate::runtime::{Chap, RuntimeError, TargetEndpoint, TargetRuntime, TargetSpec};

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/cstor/deployments/pvc-1-target";
const SERVICE: &str = "/api/v1/namespaces/cstor/services/pvc-1";
const SECRET: &str = "/api/v1/namespaces/cstor/secrets/pvc-1-chap";

macro_rules! testdata {
    ($name:literal) => {
        include_str!(concat!("testdata/", $name))
    };
}

fn spec() -> TargetSpec {
    TargetSpec {
        volume: "pvc-1".into(),
        replicas: vec![
            "10.0.0.1:7600".into(),
            "10.0.0.2:7600".into(),
            "10.0.0.3:7600".into(),
        ],
        consistency_factor: 2,
        allowed_initiators: vec!["iqn.2016-09.com.openebs.cstor:node.w1".into()],
        chap: None,
    }
}

fn runtime(script: &Script, polls: u32) -> KubeRuntime {
    let mut config = KubeConfig::new("cstor", "cstor:test");
    config.poll_interval = Duration::ZERO;
    config.polls = polls;
    KubeRuntime::new(script.client(), config)
}

fn expected_endpoint() -> TargetEndpoint {
    TargetEndpoint {
        portal: "10.96.112.7:3260".into(),
        iqn: "iqn.2016-09.com.openebs.cstor:pvc-1".into(),
        mgmt: "http://10.96.112.7:7700".into(),
    }
}

fn field<'a>(value: &'a Value, pointer: &str) -> Result<&'a Value, String> {
    value
        .pointer(pointer)
        .ok_or_else(|| format!("no {pointer} in {value}"))
}

fn expect_eq(value: &Value, pointer: &str, want: Value) -> Result<(), String> {
    let got = field(value, pointer)?;
    if *got == want {
        Ok(())
    } else {
        Err(format!("{pointer} is {got}, expected {want}"))
    }
}

/// Server-side apply of `path` by our field manager, forcing ownership.
fn apply(path: &str, response: &str) -> Exchange {
    Exchange::new(Method::PATCH, path, 200, response)
        .content_type("application/apply-patch+yaml")
        .query("fieldManager", "cstor-csi")
        .query("force", "true")
}

fn check_service(body: &Value) -> Result<(), String> {
    expect_eq(body, "/apiVersion", json!("v1"))?;
    expect_eq(body, "/kind", json!("Service"))?;
    expect_eq(body, "/metadata/name", json!("pvc-1"))?;
    expect_eq(body, "/metadata/namespace", json!("cstor"))?;
    expect_eq(
        body,
        "/metadata/labels/cstor.openebs.io~1volume",
        json!("pvc-1"),
    )?;
    expect_eq(body, "/spec/type", json!("ClusterIP"))?;
    expect_eq(
        body,
        "/spec/selector",
        json!({"app.kubernetes.io/component": "target", "cstor.openebs.io/volume": "pvc-1"}),
    )?;
    expect_eq(body, "/spec/ports/0/port", json!(3260))?;
    expect_eq(body, "/spec/ports/1/port", json!(7700))
}

fn check_deployment(body: &Value) -> Result<(), String> {
    expect_eq(body, "/apiVersion", json!("apps/v1"))?;
    expect_eq(body, "/kind", json!("Deployment"))?;
    expect_eq(body, "/metadata/name", json!("pvc-1-target"))?;
    expect_eq(body, "/spec/replicas", json!(1))?;
    expect_eq(body, "/spec/strategy/type", json!("Recreate"))?;
    expect_eq(
        body,
        "/spec/selector/matchLabels",
        json!({"app.kubernetes.io/component": "target", "cstor.openebs.io/volume": "pvc-1"}),
    )?;
    let container = "/spec/template/spec/containers/0";
    expect_eq(body, &format!("{container}/image"), json!("cstor:test"))?;
    expect_eq(
        body,
        &format!("{container}/args"),
        json!([
            "target",
            "--listen",
            "0.0.0.0:3260",
            "--mgmt-listen",
            "0.0.0.0:7700",
            "--metrics-listen",
            "0.0.0.0:9500",
            "--volume",
            "pvc-1",
            "--target-name",
            "iqn.2016-09.com.openebs.cstor:pvc-1",
            "--cf",
            "2",
            "--replica",
            "10.0.0.1:7600",
            "--replica",
            "10.0.0.2:7600",
            "--replica",
            "10.0.0.3:7600",
            "--allow-initiator",
            "iqn.2016-09.com.openebs.cstor:node.w1"
        ]),
    )?;
    field(body, &format!("{container}/readinessProbe/exec"))?;
    Ok(())
}

#[tokio::test]
async fn ensure_applies_service_then_deployment_and_waits_until_available() {
    let script = Script::new([
        apply(SERVICE, testdata!("service-applied.json")).body(check_service),
        apply(DEPLOYMENT, testdata!("deployment-created.json")).body(check_deployment),
        // No CHAP: a Secret left from an earlier spec is removed.
        Exchange::new(
            Method::DELETE,
            SECRET,
            404,
            testdata!("status-404-secret.json"),
        ),
        Exchange::new(
            Method::GET,
            DEPLOYMENT,
            200,
            testdata!("deployment-progressing.json"),
        ),
        Exchange::new(
            Method::GET,
            DEPLOYMENT,
            200,
            testdata!("deployment-available.json"),
        ),
    ]);
    let endpoint = runtime(&script, 10).ensure_target(&spec()).await;
    script.finish().unwrap();
    assert_eq!(endpoint.unwrap(), expected_endpoint());
}

#[tokio::test]
async fn re_ensure_of_an_unchanged_spec_sends_identical_applies_and_does_not_wait() {
    let exchanges = || {
        [
            apply(SERVICE, testdata!("service-applied.json")).body(check_service),
            // The stored Deployment already runs this spec: available.
            apply(DEPLOYMENT, testdata!("deployment-available.json")).body(check_deployment),
            Exchange::new(
                Method::DELETE,
                SECRET,
                404,
                testdata!("status-404-secret.json"),
            ),
        ]
    };
    let script = Script::new(exchanges().into_iter().chain(exchanges()));
    let rt = runtime(&script, 10);
    let first = rt.ensure_target(&spec()).await.unwrap();
    let second = rt.ensure_target(&spec()).await.unwrap();
    script.finish().unwrap();
    assert_eq!(first, expected_endpoint());
    assert_eq!(first, second);
    let bodies = script.bodies();
    assert_eq!(bodies.len(), 6, "every request has a JSON body");
    assert_eq!(bodies[..3], bodies[3..], "the second ensure sent the same");
}

#[tokio::test]
async fn ensure_with_chap_applies_the_secret_first_and_keeps_it_out_of_the_deployment() {
    let mut spec = spec();
    spec.chap = Some(Chap {
        user: "alice".into(),
        secret: "a-very-secret-value".into(),
    });
    let no_secret_in_deployment = |body: &Value| {
        let text = body.to_string();
        // The secret in clear and in base64 (as in the Secret's data).
        for leak in ["a-very-secret-value", "YS12ZXJ5LXNlY3JldC12YWx1ZQ"] {
            if text.contains(leak) {
                return Err(format!("deployment holds the secret: {text}"));
            }
        }
        let env = "/spec/template/spec/containers/0/env";
        expect_eq(
            body,
            &format!("{env}/1/valueFrom/secretKeyRef"),
            json!({"name": "pvc-1-chap", "key": "secret", "optional": false}),
        )?;
        expect_eq(body, &format!("{env}/1/name"), json!("CSTOR_CHAP_SECRET"))?;
        field(
            body,
            "/spec/template/metadata/annotations/cstor.openebs.io~1chap-digest",
        )?;
        Ok(())
    };
    let script = Script::new([
        apply(SECRET, testdata!("secret-applied.json")).body(|body| {
            expect_eq(body, "/kind", json!("Secret"))?;
            expect_eq(body, "/type", json!("Opaque"))?;
            expect_eq(
                body,
                "/data",
                json!({"user": "YWxpY2U=", "secret": "YS12ZXJ5LXNlY3JldC12YWx1ZQ=="}),
            )
        }),
        apply(SERVICE, testdata!("service-applied.json")).body(check_service),
        apply(DEPLOYMENT, testdata!("deployment-available.json")).body(no_secret_in_deployment),
    ]);
    let endpoint = runtime(&script, 10).ensure_target(&spec).await;
    script.finish().unwrap();
    assert_eq!(endpoint.unwrap(), expected_endpoint());
}

#[tokio::test]
async fn ensure_gives_up_after_the_bounded_number_of_reads() {
    let script = Script::new([
        apply(SERVICE, testdata!("service-applied.json")),
        apply(DEPLOYMENT, testdata!("deployment-created.json")),
        Exchange::new(
            Method::DELETE,
            SECRET,
            404,
            testdata!("status-404-secret.json"),
        ),
        Exchange::new(
            Method::GET,
            DEPLOYMENT,
            200,
            testdata!("deployment-progressing.json"),
        ),
        Exchange::new(
            Method::GET,
            DEPLOYMENT,
            200,
            testdata!("deployment-progressing.json"),
        ),
    ]);
    let result = runtime(&script, 2).ensure_target(&spec()).await;
    script.finish().unwrap();
    let Err(RuntimeError::Unavailable(message)) = result else {
        panic!("expected Unavailable, got {result:?}");
    };
    assert!(message.contains("pods available"), "{message}");
}

#[tokio::test]
async fn ensure_stops_waiting_once_the_progress_deadline_passed() {
    let script = Script::new([
        apply(SERVICE, testdata!("service-applied.json")),
        apply(DEPLOYMENT, testdata!("deployment-deadline-exceeded.json")),
        Exchange::new(
            Method::DELETE,
            SECRET,
            404,
            testdata!("status-404-secret.json"),
        ),
    ]);
    let result = runtime(&script, 10).ensure_target(&spec()).await;
    script.finish().unwrap();
    let Err(RuntimeError::Unavailable(message)) = result else {
        panic!("expected Unavailable, got {result:?}");
    };
    assert!(message.contains("timed out progressing"), "{message}");
}

#[tokio::test]
async fn invalid_spec_is_refused_before_any_request() {
    let script = Script::new([]);
    let mut bad = spec();
    bad.consistency_factor = 4;
    let result = runtime(&script, 10).ensure_target(&bad).await;
    script.finish().unwrap();
    assert!(
        matches!(result, Err(RuntimeError::InvalidSpec(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn api_errors_are_unavailable_when_a_retry_may_help_and_other_when_not() {
    for (status, response, retryable) in [
        (500, testdata!("status-500.json"), true),
        (403, testdata!("status-403-service.json"), false),
    ] {
        let script = Script::new([Exchange::new(Method::PATCH, SERVICE, status, response)]);
        let result = runtime(&script, 10).ensure_target(&spec()).await;
        script.finish().unwrap();
        match result {
            Err(RuntimeError::Unavailable(m)) if retryable => assert!(m.contains("pvc-1"), "{m}"),
            Err(RuntimeError::Other(m)) if !retryable => assert!(m.contains("forbidden"), "{m}"),
            other => panic!("HTTP {status}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn delete_of_a_target_that_does_not_exist_succeeds() {
    let script = Script::new([
        Exchange::new(
            Method::DELETE,
            DEPLOYMENT,
            404,
            testdata!("status-404-deployment.json"),
        )
        .body(|body| expect_eq(body, "/propagationPolicy", json!("Foreground"))),
        Exchange::new(
            Method::DELETE,
            SERVICE,
            404,
            testdata!("status-404-service.json"),
        ),
        Exchange::new(
            Method::DELETE,
            SECRET,
            404,
            testdata!("status-404-secret.json"),
        ),
    ]);
    let result = runtime(&script, 10).delete_target("pvc-1").await;
    script.finish().unwrap();
    result.unwrap();
}

#[tokio::test]
async fn delete_returns_only_once_the_deployment_is_gone() {
    let script = Script::new([
        Exchange::new(
            Method::DELETE,
            DEPLOYMENT,
            200,
            testdata!("deployment-terminating.json"),
        ),
        Exchange::new(
            Method::GET,
            DEPLOYMENT,
            200,
            testdata!("deployment-terminating.json"),
        ),
        Exchange::new(
            Method::GET,
            DEPLOYMENT,
            404,
            testdata!("status-404-deployment.json"),
        ),
        Exchange::new(
            Method::DELETE,
            SERVICE,
            200,
            testdata!("service-applied.json"),
        ),
        Exchange::new(
            Method::DELETE,
            SECRET,
            200,
            testdata!("secret-applied.json"),
        ),
    ]);
    let result = runtime(&script, 10).delete_target("pvc-1").await;
    script.finish().unwrap();
    result.unwrap();
}

#[tokio::test]
async fn delete_fails_when_the_deployment_outlives_the_bound() {
    let script = Script::new([
        Exchange::new(
            Method::DELETE,
            DEPLOYMENT,
            200,
            testdata!("deployment-terminating.json"),
        ),
        Exchange::new(
            Method::GET,
            DEPLOYMENT,
            200,
            testdata!("deployment-terminating.json"),
        ),
    ]);
    let result = runtime(&script, 1).delete_target("pvc-1").await;
    script.finish().unwrap();
    assert!(
        matches!(result, Err(RuntimeError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn find_of_a_missing_target_is_none() {
    let script = Script::new([Exchange::new(
        Method::GET,
        DEPLOYMENT,
        404,
        testdata!("status-404-deployment.json"),
    )]);
    let found = runtime(&script, 10).find_target("pvc-1").await;
    script.finish().unwrap();
    assert_eq!(found.unwrap(), None);
}

#[tokio::test]
async fn find_of_a_target_being_deleted_is_none() {
    let script = Script::new([Exchange::new(
        Method::GET,
        DEPLOYMENT,
        200,
        testdata!("deployment-terminating.json"),
    )]);
    let found = runtime(&script, 10).find_target("pvc-1").await;
    script.finish().unwrap();
    assert_eq!(found.unwrap(), None);
}

#[tokio::test]
async fn find_of_a_running_target_reads_the_portal_from_its_service() {
    let script = Script::new([
        Exchange::new(
            Method::GET,
            DEPLOYMENT,
            200,
            testdata!("deployment-available.json"),
        ),
        Exchange::new(Method::GET, SERVICE, 200, testdata!("service-applied.json")),
    ]);
    let found = runtime(&script, 10).find_target("pvc-1").await;
    script.finish().unwrap();
    assert_eq!(found.unwrap(), Some(expected_endpoint()));
}

/// `applied` is contained in `stored`: every field we set came back with
/// the same value (the API server only adds defaults and status).
fn contained(applied: &Value, stored: &Value, path: &str) -> Result<(), String> {
    match (applied, stored) {
        (Value::Object(a), Value::Object(s)) => a.iter().try_for_each(|(k, v)| {
            let at = format!("{path}/{k}");
            let got = s.get(k).ok_or_else(|| format!("{at} missing"))?;
            contained(v, got, &at)
        }),
        (Value::Array(a), Value::Array(s)) if a.len() == s.len() => a
            .iter()
            .zip(s)
            .enumerate()
            .try_for_each(|(i, (a, s))| contained(a, s, &format!("{path}/{i}"))),
        _ if applied == stored => Ok(()),
        _ => Err(format!("{path}: applied {applied}, recorded {stored}")),
    }
}

#[test]
fn recorded_responses_hold_what_the_runtime_applies() {
    let template = KubeConfig::new("cstor", "cstor:test").template();
    let mut with_chap = spec();
    with_chap.chap = Some(Chap {
        user: "alice".into(),
        secret: "a-very-secret-value".into(),
    });
    let cases = [
        (
            serde_json::to_value(super::objects::service(&spec(), &template)).unwrap(),
            testdata!("service-applied.json"),
        ),
        (
            serde_json::to_value(super::objects::deployment(&spec(), &template)).unwrap(),
            testdata!("deployment-created.json"),
        ),
        (
            serde_json::to_value(super::objects::secret(&with_chap, &template).unwrap()).unwrap(),
            testdata!("secret-applied.json"),
        ),
    ];
    for (applied, recorded) in cases {
        let recorded: Value = serde_json::from_str(recorded).unwrap();
        contained(&applied, &recorded, "").unwrap();
    }
}

#[tokio::test]
async fn an_https_client_builds_with_the_workspace_tls_features() {
    // rustls needs exactly one crypto provider compiled in (ring, see the
    // workspace's kube features) to build the connector `cstor csi` uses in
    // a pod; with none or two it fails at run time, not at build time.
    let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
    let client = kube::Client::try_from(config);
    assert!(client.is_ok(), "{:?}", client.err());
}
