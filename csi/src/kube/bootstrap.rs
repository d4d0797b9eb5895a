//! `cstor csi bootstrap-certs`: the cluster's CA and the certificates the
//! chart's pods mount, made as Kubernetes Secrets without cert-manager. The
//! Helm chart runs it in a pre-install/pre-upgrade hook Job whose service
//! account may only get and create Secrets in the driver's namespace.
//!
//! What it makes, each only when missing (idempotent: a second run changes
//! nothing, so every upgrade may run it):
//! - the CA (`ca.crt`, `ca.key`; an `Opaque` Secret mounted only into the
//!   CSI controller, which issues each volume's target certificate);
//! - a `kubernetes.io/tls` Secret (`ca.crt`, `tls.crt`, `tls.key`) per
//!   role the chart's pods play: the controller's admin identity, the
//!   replica daemons' identity (one pool name for the whole DaemonSet) and
//!   the node plugins' reader identity (their remount check reads targets'
//!   status).
//!
//! A Secret that exists is checked, never changed (the Job cannot update
//! Secrets): a role Secret must hold a certificate of the expected identity
//! that its key goes with, still valid, next to the CA's certificate. One
//! that does not (another pool name, another CA, expired) is an error
//! naming the Secret: the operator deletes it and runs the hook again
//! (`helm upgrade`), which issues a new one. Renewing before expiry is the
//! same operation.

use std::time::SystemTime;

use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;

use cstor_tls::issue::{
    IssueError, CA_FILE, CA_KEY_FILE, CA_VALIDITY, CERT_FILE, CERT_VALIDITY, KEY_FILE,
};
use cstor_tls::{Ca, Identity, TlsError, Validity};

/// The CA certificate's common name.
pub const CA_NAME: &str = "cstor cluster CA";
/// Default name of the CA's Secret.
pub const DEFAULT_CA_SECRET: &str = "cstor-ca";
/// Default name of the controller's (admin) Secret.
pub const DEFAULT_ADMIN_SECRET: &str = "cstor-admin-tls";
/// Default name of the replica daemons' Secret.
pub const DEFAULT_REPLICA_SECRET: &str = "cstor-replica-tls";
/// Default name of the node plugins' (reader) Secret.
pub const DEFAULT_READER_SECRET: &str = "cstor-reader-tls";
/// Field manager of the Secrets it creates.
pub const FIELD_MANAGER: &str = "cstor-bootstrap-certs";

/// `cstor csi bootstrap-certs` arguments.
#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    /// Namespace of the Secrets (the driver's own).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The pool name in the replica daemons' certificate: the `--pool`
    /// every replica daemon of the DaemonSet runs with.
    #[arg(long, env = "CSTOR_REPLICA_POOL")]
    pub replica_pool: String,
    /// The CA's Secret (ca.crt, ca.key).
    #[arg(long, default_value = DEFAULT_CA_SECRET)]
    pub ca_secret: String,
    /// The CSI controller's Secret (admin identity).
    #[arg(long, default_value = DEFAULT_ADMIN_SECRET)]
    pub admin_secret: String,
    /// The replica daemons' Secret (replica identity of --replica-pool).
    #[arg(long, default_value = DEFAULT_REPLICA_SECRET)]
    pub replica_secret: String,
    /// The node plugins' Secret (reader identity).
    #[arg(long, default_value = DEFAULT_READER_SECRET)]
    pub reader_secret: String,
}

impl BootstrapArgs {
    /// The role Secrets, each with the identity its certificate carries.
    pub fn roles(&self) -> [(String, Identity); 3] {
        [
            (self.admin_secret.clone(), Identity::Admin),
            (
                self.replica_secret.clone(),
                Identity::Replica {
                    pool: self.replica_pool.clone(),
                },
            ),
            (self.reader_secret.clone(), Identity::Reader),
        ]
    }
}

/// Why the Secrets could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot reach the Kubernetes API server: {0}")]
    Client(String),
    #[error("{op} secret {namespace}/{name}: {source}")]
    Api {
        op: &'static str,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error(
        "secret {namespace}/{name} cannot be used: {reason}; delete it and run this again \
         (`helm upgrade` runs it) to have it made anew"
    )]
    Unusable {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("cannot issue: {0}")]
    Issue(#[from] IssueError),
}

/// What became of one Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Made by this run.
    Created,
    /// There already, checked and left as it was.
    Kept,
}

/// Runs `cstor csi bootstrap-certs` in a pod (the service account's
/// credentials).
pub async fn run(args: &BootstrapArgs) -> Result<(), BootstrapError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| BootstrapError::Client(e.to_string()))?;
    for (name, outcome) in bootstrap(client, args).await? {
        tracing::info!(namespace = %args.namespace, secret = %name, ?outcome, "certificate secret ready");
    }
    Ok(())
}

/// Makes what is missing (see the module doc); answers each Secret's
/// outcome, the CA's first.
pub async fn bootstrap(
    client: kube::Client,
    args: &BootstrapArgs,
) -> Result<Vec<(String, Outcome)>, BootstrapError> {
    let secrets: Api<Secret> = Api::namespaced(client, &args.namespace);
    let at = Place {
        secrets: &secrets,
        namespace: &args.namespace,
    };
    let mut outcomes = Vec::new();
    let (ca, outcome) = ca(&at, &args.ca_secret).await?;
    outcomes.push((args.ca_secret.clone(), outcome));
    for (name, identity) in args.roles() {
        let outcome = role(&at, &ca, &name, &identity).await?;
        outcomes.push((name, outcome));
    }
    Ok(outcomes)
}

/// The Secrets' API and namespace, for errors.
struct Place<'a> {
    secrets: &'a Api<Secret>,
    namespace: &'a str,
}

impl Place<'_> {
    fn api_error(&self, op: &'static str, name: &str, source: kube::Error) -> BootstrapError {
        BootstrapError::Api {
            op,
            namespace: self.namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        }
    }

    fn unusable(&self, name: &str, reason: impl Into<String>) -> BootstrapError {
        BootstrapError::Unusable {
            namespace: self.namespace.to_owned(),
            name: name.to_owned(),
            reason: reason.into(),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Secret>, BootstrapError> {
        self.secrets
            .get_opt(name)
            .await
            .map_err(|e| self.api_error("read", name, e))
    }

    /// Creates `secret`; `Ok(false)` when one of its name exists already
    /// (made meanwhile by another run).
    async fn create(&self, name: &str, secret: &Secret) -> Result<bool, BootstrapError> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match self.secrets.create(&params, secret).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
            Err(e) => Err(self.api_error("create", name, e)),
        }
    }

    /// The text of `key` in `secret`.
    fn text(&self, name: &str, secret: &Secret, key: &str) -> Result<String, BootstrapError> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .ok_or_else(|| self.unusable(name, format!("it has no {key}")))?;
        String::from_utf8(bytes.0.clone())
            .map_err(|_| self.unusable(name, format!("its {key} is not text")))
    }
}

/// The CA: read from its Secret, or made and stored.
async fn ca(at: &Place<'_>, name: &str) -> Result<(Ca, Outcome), BootstrapError> {
    if let Some(secret) = at.get(name).await? {
        return Ok((load_ca(at, name, &secret)?, Outcome::Kept));
    }
    let ca = Ca::generate(CA_NAME, Validity::from_now(CA_VALIDITY))?;
    let data = BTreeMap::from([
        (
            CA_FILE.to_owned(),
            ByteString(ca.cert_pem().as_bytes().to_vec()),
        ),
        (
            CA_KEY_FILE.to_owned(),
            ByteString(ca.key_pem().into_bytes()),
        ),
    ]);
    if at
        .create(name, &secret_object(name, "Opaque", data))
        .await?
    {
        return Ok((ca, Outcome::Created));
    }
    // Another run made it first: use theirs.
    let secret = at
        .get(name)
        .await?
        .ok_or_else(|| at.unusable(name, "it was created and then removed"))?;
    Ok((load_ca(at, name, &secret)?, Outcome::Kept))
}

fn load_ca(at: &Place<'_>, name: &str, secret: &Secret) -> Result<Ca, BootstrapError> {
    let cert = at.text(name, secret, CA_FILE)?;
    let key = at.text(name, secret, CA_KEY_FILE)?;
    Ca::from_pem(&cert, &key).map_err(|e| at.unusable(name, e.to_string()))
}

/// One role's Secret: checked if there, else issued and stored.
async fn role(
    at: &Place<'_>,
    ca: &Ca,
    name: &str,
    identity: &Identity,
) -> Result<Outcome, BootstrapError> {
    if let Some(secret) = at.get(name).await? {
        check_role(at, ca, name, identity, &secret)?;
        return Ok(Outcome::Kept);
    }
    let issued = ca.issue(identity, Validity::from_now(CERT_VALIDITY))?;
    let data = BTreeMap::from([
        (
            CA_FILE.to_owned(),
            ByteString(ca.cert_pem().as_bytes().to_vec()),
        ),
        (
            CERT_FILE.to_owned(),
            ByteString(issued.cert_pem.into_bytes()),
        ),
        (KEY_FILE.to_owned(), ByteString(issued.key_pem.into_bytes())),
    ]);
    if at
        .create(name, &secret_object(name, "kubernetes.io/tls", data))
        .await?
    {
        Ok(Outcome::Created)
    } else {
        Ok(Outcome::Kept)
    }
}

/// A role Secret is usable: its certificate carries `identity`, its key
/// goes with it, it is still valid, and it trusts our CA.
fn check_role(
    at: &Place<'_>,
    ca: &Ca,
    name: &str,
    identity: &Identity,
    secret: &Secret,
) -> Result<(), BootstrapError> {
    let trusted = at.text(name, secret, CA_FILE)?;
    if !trusted.contains(ca.cert_pem().trim()) {
        return Err(at.unusable(
            name,
            "its ca.crt does not hold the cluster CA's certificate",
        ));
    }
    let cert = at.text(name, secret, CERT_FILE)?;
    let key = at.text(name, secret, KEY_FILE)?;
    let (found, not_after) =
        cstor_tls::credentials::inspect(trusted.as_bytes(), cert.as_bytes(), key.as_bytes())
            .map_err(|e: TlsError| at.unusable(name, e.to_string()))?;
    if found != *identity {
        return Err(at.unusable(
            name,
            format!("its certificate is for {found}, not {identity}"),
        ));
    }
    if not_after <= SystemTime::now() {
        return Err(at.unusable(name, "its certificate has expired"));
    }
    Ok(())
}

fn secret_object(name: &str, type_: &str, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_owned(), "cstor".to_owned()),
                ("app.kubernetes.io/part-of".to_owned(), "cstor".to_owned()),
                ("app.kubernetes.io/component".to_owned(), "tls".to_owned()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::mock::{Exchange, Script};
    use http::Method;
    use serde_json::{json, Value};

    const SECRETS: &str = "/api/v1/namespaces/cstor/secrets";

    fn args() -> BootstrapArgs {
        BootstrapArgs {
            namespace: "cstor".into(),
            replica_pool: "cstor-pool".into(),
            ca_secret: DEFAULT_CA_SECRET.into(),
            admin_secret: DEFAULT_ADMIN_SECRET.into(),
            replica_secret: DEFAULT_REPLICA_SECRET.into(),
            reader_secret: DEFAULT_READER_SECRET.into(),
        }
    }

    fn not_found(name: &str) -> String {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("secrets \"{name}\" not found"), "reason": "NotFound",
            "details": {"name": name, "kind": "secrets"}, "code": 404
        })
        .to_string()
    }

    fn already_exists(name: &str) -> String {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("secrets \"{name}\" already exists"), "reason": "AlreadyExists",
            "details": {"name": name, "kind": "secrets"}, "code": 409
        })
        .to_string()
    }

    /// A stored Secret: `body` (what was created) as the API server holds it.
    fn stored(body: &Value) -> String {
        let mut stored = body.clone();
        stored["metadata"]["namespace"] = json!("cstor");
        stored["metadata"]["uid"] = json!("7d0c4c5e-0a52-4d7e-9f0e-2f6d1b1a9c11");
        stored["metadata"]["resourceVersion"] = json!("1");
        stored.to_string()
    }

    fn get(name: &str, status: u16, response: &str) -> Exchange {
        Exchange::new(Method::GET, &format!("{SECRETS}/{name}"), status, response)
    }

    fn create(name: &str, status: u16, response: &str) -> Exchange {
        Exchange::new(Method::POST, SECRETS, status, response)
            .query("fieldManager", FIELD_MANAGER)
            .body({
                let name = name.to_owned();
                move |body| match body.pointer("/metadata/name") {
                    Some(n) if *n == json!(name) => Ok(()),
                    other => Err(format!("creates {other:?}, expected {name}")),
                }
            })
    }

    fn created(name: &str) -> String {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "cstor"}})
            .to_string()
    }

    /// The decoded `key` of a Secret's JSON body.
    fn data(body: &Value, key: &str) -> Vec<u8> {
        let secret: Secret = serde_json::from_value(body.clone()).unwrap();
        secret.data.unwrap()[key].0.clone()
    }

    /// Loads a role Secret's body as a TLS directory.
    fn credentials(body: &Value) -> std::sync::Arc<cstor_tls::Credentials> {
        let dir = tempfile::tempdir().unwrap();
        for file in [CA_FILE, CERT_FILE, KEY_FILE] {
            std::fs::write(dir.path().join(file), data(body, file)).unwrap();
        }
        cstor_tls::Credentials::load(dir.path()).unwrap()
    }

    /// The first run on an empty namespace: every Secret made.
    async fn first_run() -> Vec<Value> {
        let names = [
            DEFAULT_CA_SECRET,
            DEFAULT_ADMIN_SECRET,
            DEFAULT_REPLICA_SECRET,
            DEFAULT_READER_SECRET,
        ];
        let script = Script::new(names.iter().flat_map(|name| {
            [
                get(name, 404, &not_found(name)),
                create(name, 201, &created(name)),
            ]
        }));
        let outcomes = bootstrap(script.client(), &args()).await.unwrap();
        script.finish().unwrap();
        assert_eq!(
            outcomes,
            names.map(|n| (n.to_owned(), Outcome::Created)).to_vec()
        );
        script.bodies()
    }

    #[tokio::test]
    async fn a_first_run_makes_the_ca_and_a_certificate_of_each_role_signed_by_it() {
        let bodies = first_run().await;
        assert_eq!(bodies.len(), 4);
        let ca = &bodies[0];
        assert_eq!(ca["type"], "Opaque");
        let ca_pem = String::from_utf8(data(ca, CA_FILE)).unwrap();
        assert!(String::from_utf8(data(ca, CA_KEY_FILE))
            .unwrap()
            .contains("PRIVATE KEY"));
        let want = [
            Identity::Admin,
            Identity::Replica {
                pool: "cstor-pool".into(),
            },
            Identity::Reader,
        ];
        for (body, identity) in bodies[1..].iter().zip(want) {
            assert_eq!(body["type"], "kubernetes.io/tls");
            assert_eq!(String::from_utf8(data(body, CA_FILE)).unwrap(), ca_pem);
            assert_eq!(credentials(body).identity(), identity);
        }
        // The CA in the Secret is the one that signed them: a handshake
        // between two of the roles succeeds.
        let (admin, replica) = (credentials(&bodies[1]), credentials(&bodies[2]));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            cstor_tls::Security::Tls(replica)
                .accept(tcp)
                .await
                .map(|(_, p)| p)
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_, peer) = cstor_tls::Security::Tls(admin)
            .connect(tcp, &[cstor_tls::Role::Replica])
            .await
            .unwrap();
        assert_eq!(
            peer,
            cstor_tls::Peer::Authenticated(Identity::Replica {
                pool: "cstor-pool".into()
            })
        );
        assert_eq!(
            server.await.unwrap().unwrap(),
            cstor_tls::Peer::Authenticated(Identity::Admin)
        );
    }

    #[tokio::test]
    async fn a_second_run_reads_everything_and_creates_nothing() {
        let bodies = first_run().await;
        let names = [
            DEFAULT_CA_SECRET,
            DEFAULT_ADMIN_SECRET,
            DEFAULT_REPLICA_SECRET,
            DEFAULT_READER_SECRET,
        ];
        let script = Script::new(
            names
                .iter()
                .zip(&bodies)
                .map(|(name, body)| get(name, 200, &stored(body))),
        );
        let outcomes = bootstrap(script.client(), &args()).await.unwrap();
        script.finish().unwrap();
        assert!(
            outcomes.iter().all(|(_, o)| *o == Outcome::Kept),
            "{outcomes:?}"
        );
    }

    #[tokio::test]
    async fn a_replica_secret_for_another_pool_is_refused_not_replaced() {
        let bodies = first_run().await;
        let mut other = args();
        other.replica_pool = "another-pool".into();
        let script = Script::new([
            get(DEFAULT_CA_SECRET, 200, &stored(&bodies[0])),
            get(DEFAULT_ADMIN_SECRET, 200, &stored(&bodies[1])),
            get(DEFAULT_REPLICA_SECRET, 200, &stored(&bodies[2])),
        ]);
        let result = bootstrap(script.client(), &other).await;
        script.finish().unwrap();
        match result {
            Err(BootstrapError::Unusable { name, reason, .. }) => {
                assert_eq!(name, DEFAULT_REPLICA_SECRET);
                assert!(reason.contains("another-pool"), "{reason}");
            }
            other => panic!("expected Unusable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_role_secret_of_another_ca_is_refused() {
        let first = first_run().await;
        let second = first_run().await;
        // The CA of the first run, the admin Secret of the second.
        let script = Script::new([
            get(DEFAULT_CA_SECRET, 200, &stored(&first[0])),
            get(DEFAULT_ADMIN_SECRET, 200, &stored(&second[1])),
        ]);
        let result = bootstrap(script.client(), &args()).await;
        script.finish().unwrap();
        assert!(
            matches!(&result, Err(BootstrapError::Unusable { name, .. }) if name == DEFAULT_ADMIN_SECRET),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_ca_made_meanwhile_by_another_run_is_used_instead_of_ours() {
        let theirs = first_run().await;
        let ca_pem = String::from_utf8(data(&theirs[0], CA_FILE)).unwrap();
        let mut exchanges = vec![
            get(DEFAULT_CA_SECRET, 404, &not_found(DEFAULT_CA_SECRET)),
            create(DEFAULT_CA_SECRET, 409, &already_exists(DEFAULT_CA_SECRET)),
            get(DEFAULT_CA_SECRET, 200, &stored(&theirs[0])),
        ];
        for name in [
            DEFAULT_ADMIN_SECRET,
            DEFAULT_REPLICA_SECRET,
            DEFAULT_READER_SECRET,
        ] {
            exchanges.push(get(name, 404, &not_found(name)));
            exchanges.push(create(name, 201, &created(name)));
        }
        let script = Script::new(exchanges);
        let outcomes = bootstrap(script.client(), &args()).await.unwrap();
        script.finish().unwrap();
        assert_eq!(outcomes[0], (DEFAULT_CA_SECRET.to_owned(), Outcome::Kept));
        // Role certificates trust (and are signed by) their CA.
        let bodies = script.bodies();
        let admin = bodies.last().unwrap();
        assert_eq!(String::from_utf8(data(admin, CA_FILE)).unwrap(), ca_pem);
    }
}
