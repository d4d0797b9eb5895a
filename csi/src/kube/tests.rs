//! `KubeRuntime` against a scripted API server: the exact requests it makes
//! for each operation, answered with responses in the API server's format
//! (testdata/, Kubernetes 1.32 shapes). Not a live cluster.

use std::sync::Arc;
use std::time::Duration;

use cstor_tls::issue::CA_VALIDITY;
use cstor_tls::{Ca, Credentials, Identity, Validity};
use http::Method;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{json, Value};

use super::mock::{Exchange, Script};
use super::{KubeConfig, KubeRuntime};
use crate::certs::TargetCerts;
use crate::runtime::{Chap, RuntimeError, TargetEndpoint, TargetRuntime, TargetSpec};

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/cstor/deployments/pvc-1-target";
const SERVICE: &str = "/api/v1/namespaces/cstor/services/pvc-1";
const SECRETS: &str = "/api/v1/namespaces/cstor/secrets";
const CHAP_SECRET: &str = "/api/v1/namespaces/cstor/secrets/pvc-1-chap";
const TLS_SECRET: &str = "/api/v1/namespaces/cstor/secrets/pvc-1-tls";

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

/// Targets' certificates from a CA made for the test.
fn certs() -> TargetCerts {
    let ca = Ca::generate("test", Validity::from_now(CA_VALIDITY)).unwrap();
    TargetCerts::Issue(Arc::new(ca))
}

/// The default runtime: TLS and CHAP.
fn runtime(script: &Script, polls: u32) -> KubeRuntime {
    let mut config = KubeConfig::new("cstor", "cstor:test");
    config.poll_interval = Duration::ZERO;
    config.polls = polls;
    KubeRuntime::new(script.client(), config, certs())
}

/// A runtime in plaintext without CHAP.
fn plain_runtime(script: &Script, polls: u32) -> KubeRuntime {
    let mut config = KubeConfig::new("cstor", "cstor:test");
    config.poll_interval = Duration::ZERO;
    config.polls = polls;
    config.chap = false;
    KubeRuntime::new(script.client(), config, TargetCerts::Plaintext)
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

/// Creation (POST) of a Secret named `name` by our field manager.
fn create_secret(name: &'static str, status: u16, response: &str) -> Exchange {
    Exchange::new(Method::POST, SECRETS, status, response)
        .query("fieldManager", "cstor-csi")
        .body(move |body| {
            expect_eq(body, "/metadata/name", json!(name))?;
            expect_eq(body, "/immutable", json!(true))
        })
}

fn create_tls_secret() -> Exchange {
    create_secret("pvc-1-tls", 201, testdata!("secret-tls-created.json"))
}

fn create_chap_secret() -> Exchange {
    create_secret("pvc-1-chap", 201, testdata!("secret-chap-created.json"))
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

/// The Deployment of the default runtime (TLS, CHAP).
fn check_deployment(body: &Value) -> Result<(), String> {
    check_deployment_with(body, &["--tls-dir", "/etc/cstor/tls"])
}

fn check_deployment_with(body: &Value, security: &[&str]) -> Result<(), String> {
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
    let mut args = vec![
        "target",
        "--listen",
        "$(POD_IP):3260",
        "--mgmt-listen",
        "$(POD_IP):7700",
        "--metrics-listen",
        "$(POD_IP):9500",
        "--volume",
        "pvc-1",
        "--target-name",
        "iqn.2016-09.com.openebs.cstor:pvc-1",
        "--cf",
        "2",
    ];
    args.extend(security);
    args.extend([
        "--replica",
        "10.0.0.1:7600",
        "--replica",
        "10.0.0.2:7600",
        "--replica",
        "10.0.0.3:7600",
        "--allow-initiator",
        "iqn.2016-09.com.openebs.cstor:node.w1",
    ]);
    expect_eq(body, &format!("{container}/args"), json!(args))?;
    expect_eq(
        body,
        &format!("{container}/readinessProbe/httpGet/path"),
        json!("/metrics"),
    )?;
    field(body, &format!("{container}/resources/limits/memory"))?;
    field(body, &format!("{container}/resources/requests/memory"))?;
    Ok(())
}

/// The decoded data of a Secret's JSON body.
fn secret_data(body: &Value) -> std::collections::BTreeMap<String, Vec<u8>> {
    let secret: Secret = serde_json::from_value(body.clone()).unwrap();
    secret
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

#[tokio::test]
async fn ensure_creates_the_secrets_applies_service_then_deployment_and_waits_until_available() {
    let script = Script::new([
        create_tls_secret().body(|body| expect_eq(body, "/type", json!("kubernetes.io/tls"))),
        create_chap_secret().body(|body| expect_eq(body, "/type", json!("Opaque"))),
        apply(SERVICE, testdata!("service-applied.json")).body(check_service),
        apply(DEPLOYMENT, testdata!("deployment-created.json")).body(check_deployment),
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
async fn the_target_secret_holds_a_certificate_for_its_volume_only() {
    let script = Script::new([
        create_tls_secret(),
        create_chap_secret(),
        apply(SERVICE, testdata!("service-applied.json")),
        apply(DEPLOYMENT, testdata!("deployment-available.json")),
    ]);
    runtime(&script, 10).ensure_target(&spec()).await.unwrap();
    script.finish().unwrap();
    let tls = secret_data(&script.bodies()[0]);
    let dir = tempfile::tempdir().unwrap();
    for (file, bytes) in &tls {
        std::fs::write(dir.path().join(file), bytes).unwrap();
    }
    let mut files: Vec<&str> = tls.keys().map(String::as_str).collect();
    files.sort_unstable();
    assert_eq!(files, ["ca.crt", "tls.crt", "tls.key"]);
    let credentials = Credentials::load(dir.path()).unwrap();
    assert_eq!(
        credentials.identity(),
        Identity::Target {
            volumes: vec!["pvc-1".into()]
        }
    );
}

#[tokio::test]
async fn secrets_that_exist_are_kept_and_a_re_ensure_applies_the_same_objects() {
    let exists = |name: &'static str| create_secret(name, 409, testdata!("status-409-secret.json"));
    let exchanges = || {
        [
            exists("pvc-1-tls"),
            exists("pvc-1-chap"),
            apply(SERVICE, testdata!("service-applied.json")).body(check_service),
            // The stored Deployment already runs this spec: available.
            apply(DEPLOYMENT, testdata!("deployment-available.json")).body(check_deployment),
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
    assert_eq!(bodies.len(), 8, "every request has a JSON body");
    assert_eq!(
        bodies[2..4],
        bodies[6..8],
        "the second ensure applied the same"
    );
}

#[tokio::test]
async fn no_secret_reaches_the_deployment_the_service_or_the_endpoint() {
    let script = Script::new([
        create_tls_secret(),
        create_chap_secret(),
        apply(SERVICE, testdata!("service-applied.json")),
        apply(DEPLOYMENT, testdata!("deployment-available.json")).body(|body| {
            let env = "/spec/template/spec/containers/0/env";
            expect_eq(
                body,
                &format!("{env}/2/valueFrom/secretKeyRef"),
                json!({"name": "pvc-1-chap", "key": "node.session.auth.password", "optional": false}),
            )?;
            expect_eq(body, &format!("{env}/2/name"), json!("CSTOR_CHAP_SECRET"))
        }),
    ]);
    let rt = runtime(&script, 10);
    let endpoint = rt.ensure_target(&spec()).await.unwrap();
    script.finish().unwrap();
    let bodies = script.bodies();
    let tls = secret_data(&bodies[0]);
    let chap = secret_data(&bodies[1]);
    let secrets: Vec<String> = [
        &tls["tls.key"],
        &chap["node.session.auth.password"],
        &chap["node.session.auth.password_in"],
    ]
    .iter()
    .map(|b| String::from_utf8((*b).clone()).unwrap())
    .collect();
    // In clear and as the Secret's base64: the bodies' raw text.
    let raw: Vec<String> = [&bodies[0], &bodies[1]]
        .iter()
        .flat_map(|b| {
            b["data"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    // The endpoint feeds the volume and publish contexts (PV, VolumeAttachment).
    let elsewhere = [
        bodies[2].to_string(),
        bodies[3].to_string(),
        format!("{endpoint:?}"),
        format!("{rt:?}"),
    ];
    for text in &elsewhere {
        for leak in secrets.iter().chain(&raw) {
            let probe = leak.lines().find(|l| l.len() > 12).unwrap_or(leak);
            assert!(!text.contains(probe), "a secret leaked into {text}");
        }
    }
}

#[tokio::test]
async fn in_plaintext_without_chap_no_secret_is_made_and_leftovers_are_deleted() {
    let script = Script::new([
        apply(SERVICE, testdata!("service-applied.json")).body(check_service),
        apply(DEPLOYMENT, testdata!("deployment-available.json"))
            .body(|body| check_deployment_with(body, &["--insecure-plaintext"])),
        Exchange::new(
            Method::DELETE,
            TLS_SECRET,
            404,
            testdata!("status-404-secret-tls.json"),
        ),
        Exchange::new(
            Method::DELETE,
            CHAP_SECRET,
            200,
            testdata!("secret-chap-created.json"),
        ),
    ]);
    let endpoint = plain_runtime(&script, 10).ensure_target(&spec()).await;
    script.finish().unwrap();
    assert_eq!(endpoint.unwrap(), expected_endpoint());
    let deployment = &script.bodies()[1];
    let pod = field(deployment, "/spec/template/spec").unwrap();
    assert!(pod.get("volumes").is_none(), "{pod}");
    assert!(!pod.to_string().contains("CSTOR_CHAP"), "{pod}");
}

#[tokio::test]
async fn a_spec_carrying_chap_is_refused_before_any_request() {
    let script = Script::new([]);
    let mut with_chap = spec();
    with_chap.chap = Some(Chap {
        user: "alice".into(),
        secret: "a-very-secret-value".into(),
    });
    let result = runtime(&script, 10).ensure_target(&with_chap).await;
    script.finish().unwrap();
    assert!(
        matches!(result, Err(RuntimeError::InvalidSpec(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn ensure_gives_up_after_the_bounded_number_of_reads() {
    let script = Script::new([
        create_tls_secret(),
        create_chap_secret(),
        apply(SERVICE, testdata!("service-applied.json")),
        apply(DEPLOYMENT, testdata!("deployment-created.json")),
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
        create_tls_secret(),
        create_chap_secret(),
        apply(SERVICE, testdata!("service-applied.json")),
        apply(DEPLOYMENT, testdata!("deployment-deadline-exceeded.json")),
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
        let result = plain_runtime(&script, 10).ensure_target(&spec()).await;
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
            TLS_SECRET,
            404,
            testdata!("status-404-secret-tls.json"),
        ),
        Exchange::new(
            Method::DELETE,
            CHAP_SECRET,
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
            TLS_SECRET,
            200,
            testdata!("secret-tls-created.json"),
        ),
        Exchange::new(
            Method::DELETE,
            CHAP_SECRET,
            200,
            testdata!("secret-chap-created.json"),
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
    use super::objects::{self, ChapCredentials, IpFamily};
    let template = KubeConfig::new("cstor", "cstor:test").template(true);
    let cert = certs().issue("pvc-1").unwrap().unwrap();
    let chap = ChapCredentials::generate().unwrap();
    // Secrets hold random data: their metadata and type are compared.
    let without_data = |secret: Secret| {
        let mut value = serde_json::to_value(secret).unwrap();
        value.as_object_mut().unwrap().remove("data");
        value
    };
    let cases = [
        (
            serde_json::to_value(objects::service(&spec(), &template)).unwrap(),
            testdata!("service-applied.json"),
        ),
        (
            serde_json::to_value(objects::deployment(&spec(), &template, IpFamily::V4)).unwrap(),
            testdata!("deployment-created.json"),
        ),
        (
            without_data(objects::tls_secret("pvc-1", &template, &cert)),
            testdata!("secret-tls-created.json"),
        ),
        (
            without_data(objects::chap_secret("pvc-1", &template, &chap)),
            testdata!("secret-chap-created.json"),
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
